"""Shared fixtures: settings, one database per run (emptied after each test), the app, clients.

The database is SQLite in a temporary folder unless AUTHSERVER_TEST_DATABASE_URL names another
(CI runs the suite a second time on PostgreSQL). Keys are made once per run and copied, because
RSA key generation is the slowest thing a test could do.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.app import create_app
from authserver.db import Database
from authserver.keystore import KeyStore
from authserver.kv import REDIS_PREFIX
from authserver.models import Base
from authserver.settings import Settings
from tests import factories

TEST_DATABASE_URL = os.environ.get("AUTHSERVER_TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("AUTHSERVER_TEST_REDIS_URL")
POSTGRES_URL = TEST_DATABASE_URL or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ISSUER = "http://127.0.0.1:8000"


def require_postgres() -> str:
    """The PostgreSQL URL; in CI an unreachable server fails the test, elsewhere it skips."""
    database = Database(POSTGRES_URL)
    try:
        database.ping()
    except Exception as exc:
        if IN_CI or TEST_DATABASE_URL:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    finally:
        database.dispose()
    return POSTGRES_URL


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if TEST_DATABASE_URL:
        if TEST_DATABASE_URL.startswith("postgresql"):
            require_postgres()
        return TEST_DATABASE_URL
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def schema(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    Base.metadata.drop_all(database.engine)
    Base.metadata.create_all(database.engine)
    yield database
    Base.metadata.drop_all(database.engine)
    database.dispose()


@pytest.fixture(scope="session")
def keys_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys-template") / "keys"
    KeyStore(directory).open()
    return directory


@pytest.fixture
def keys_dir(keys_template: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    shutil.copytree(keys_template, directory)
    return directory


@pytest.fixture
def settings(database_url: str, keys_dir: Path, schema: Database) -> Settings:
    return Settings(
        issuer=ISSUER,
        database_url=database_url,
        keys_dir=keys_dir,
        redis_url=TEST_REDIS_URL,
        log_format="json",
        password_time_cost=1,
        password_memory_cost=8,
        password_parallelism=1,
    )


@pytest.fixture(autouse=True)
def _empty_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "schema" not in request.fixturenames:
        return
    database: Database = request.getfixturevalue("schema")
    with database.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture(autouse=True)
def _forget_shared_counters() -> Iterator[None]:
    """Rate-limit counters in a shared test Redis would leak from one test into the next."""
    yield
    if not TEST_REDIS_URL:
        return
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=0.5)
    try:
        for key in client.scan_iter(f"{REDIS_PREFIX}*"):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def app(settings: Settings) -> Iterator[Starlette]:
    application = create_app(settings)
    yield application
    application.state.db.dispose()


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER, follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def services(app: Starlette) -> factories.Services:
    return app.state.services


@pytest.fixture
def make(services: factories.Services) -> factories.Factory:
    return factories.Factory(services)


def count_rows(database: Database, table: str) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())  # noqa: S608


@pytest.fixture
def tokens(make: factories.Factory) -> factories.TokenFactory:
    return factories.TokenFactory(make)
