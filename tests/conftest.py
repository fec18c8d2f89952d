"""Shared fixtures: settings, one database per run (emptied after each test), the app, clients,
people with API tokens; and helpers to call `/api/v1`, read forms and look at rows.

The database is SQLite in a temporary folder unless AUTHSERVER_TEST_DATABASE_URL names another
(CI runs the suite a second time on PostgreSQL). Keys are made once per run and copied, because
RSA key generation is the slowest thing a test could do.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema_rs
import pytest
import redis
from sqlalchemy import select, text
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver import ratelimit, rest
from authserver.app import create_app
from authserver.audit import AuditEvent
from authserver.db import Database, current_session
from authserver.keystore import KeyStore
from authserver.kv import REDIS_PREFIX
from authserver.models import Base
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users
from tests import factories
from tests.factories import bearer

TEST_DATABASE_URL = os.environ.get("AUTHSERVER_TEST_DATABASE_URL")
TEST_REDIS_URL = os.environ.get("AUTHSERVER_TEST_REDIS_URL")
POSTGRES_URL = TEST_DATABASE_URL or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
ISSUER = "http://127.0.0.1:8000"
API = rest.API_PREFIX
#: RFC 6750 §3.1 / RFC 9728 §5.1: what every 401 without a token from the API (and
#: /userinfo, part of it) says.
API_METADATA = f"{ISSUER}/.well-known/oauth-protected-resource/api/v1"
API_CHALLENGE = f'Bearer resource_metadata="{API_METADATA}"'
#: What a person's own token holds: every self-service scope.
SELF_SCOPES = "users:read users:write sessions:read sessions:write"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


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
def _rate_limit_windows_start_with_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rate-limit windows are aligned to the wall clock; a test that makes `limit + 1`
    attempts would see the count reset if a window ended mid-test. The limiters' clock runs
    at real speed from the start of a day, so every window (a divisor of a day) is whole."""
    started = time.time()
    midnight = started - started % 86400
    clock = SimpleNamespace(time=lambda: midnight + (time.time() - started))
    monkeypatch.setattr(ratelimit, "time", clock)


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
def app_with(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Clients for apps built from changed settings: `app_with(login_rate_per_ip=3)`."""
    with ExitStack() as stack:

        def build(**changes: Any) -> TestClient:
            application = create_app(settings.replace(**changes))
            client = TestClient(application, base_url=settings.issuer, follow_redirects=False)
            return stack.enter_context(client)

        yield build


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


@pytest.fixture
def person(
    make: factories.Factory, tokens: factories.TokenFactory
) -> Callable[..., factories.Person]:
    def build(email: str, scope: str = SELF_SCOPES, **fields: Any) -> factories.Person:
        user = make.user(email=email, **fields)
        return factories.Person(user, tokens.access_token(user, scope))

    return build


@pytest.fixture
def admin(person: Callable[..., factories.Person]) -> factories.Person:
    """A server administrator whose token holds `admin` (which stands for every scope)."""
    return person("root@example.com", scope="admin", name="Root", is_admin=True)


# -- the API over HTTP ------------------------------------------------------------------------


def is_problem(response: httpx.Response, status: int) -> bool:
    """An RFC 9457 answer with this status."""
    if response.status_code != status:
        return False
    if response.headers.get("content-type") != "application/problem+json":
        return False
    body = response.json()
    return (
        body.get("status") == status
        and {"type", "title", "detail"} <= set(body)
        and isinstance(body["detail"], str)
    )


class Api:
    """The HTTP client with bearer and JSON helpers: `api.call("PATCH", path, token, {...})`.

    Paths are taken as they are, or under `base` (the API tests use `/api/v1`).
    """

    def __init__(self, client: TestClient, base: str = "") -> None:
        self.client = client
        self.base = base

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None, **kw: Any
    ) -> httpx.Response:
        headers = {**(bearer(token) if token else {}), **kw.pop("headers", {})}
        if body is not None:
            kw["json"] = body
        return self.client.request(method, self.base + path, headers=headers, **kw)


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)


class Schemas:
    """An operation table, to call its operations with both bodies checked against the
    schemas the OpenAPI document gives them (paths in full, `/api/v1/...`)."""

    def __init__(self, operations: Sequence[rest.Operation]) -> None:
        self.operations = operations

    def operation(self, method: str, path: str) -> rest.Operation:
        [found] = [op for op in self.operations if op.method == method and API + op.path == path]
        return found

    def call(
        self, api: Api, method: str, template: str, token: str, body: Any = None, **ids: str
    ) -> Any:
        """Call the operation at `template`: the body sent must fit its request schema, and
        the answer must have its status and fit its response schema."""
        spec = self.operation(method, template)
        if body is not None:
            assert spec.request is not None
            jsonschema_rs.validator_for(spec.request).validate(body)
        response = api.call(method, template.format(**ids), token, body)
        assert response.status_code == spec.status, response.text
        if spec.response is None:
            assert response.content == b""
            return None
        validator = jsonschema_rs.validator_for(spec.response, validate_formats=True)
        validator.validate(response.json())
        return response.json()


# -- pages and rows ---------------------------------------------------------------------------


def csrf_token(page: httpx.Response) -> str:
    match = CSRF_INPUT.search(page.text)
    assert match, "the page has no CSRF token"
    return match.group(1)


def sign_in_by_form(
    client: httpx.Client, email: str, password: str = factories.PASSWORD, **fields: str
) -> httpx.Response:
    """Open /login in `client` (a test client or a real server's) and submit it, as a person
    would; extra `fields` (`next`) go with the form. The answer, for the test to judge."""
    page = client.get("/login")
    data = {"csrf_token": csrf_token(page), "email": email, "password": password, **fields}
    return client.post("/login", data=data)


def is_signed_in(client: httpx.Client) -> bool:
    page = client.get("/login")
    assert page.status_code == 200
    return "You are signed in as" in page.text


def audit_events(
    services: Services, event: str | None = None, *, prefix: str | None = None
) -> list[AuditEvent]:
    """The audit events named `event`, or whose names start with `prefix`, oldest first."""

    def query() -> list[AuditEvent]:
        statement = select(AuditEvent).order_by(AuditEvent.at)
        if event is not None:
            statement = statement.where(AuditEvent.event == event)
        if prefix is not None:
            statement = statement.where(AuditEvent.event.startswith(prefix))
        return list(current_session().scalars(statement))

    return services.db.call(query)


def sessions_of(services: Services, user_id: str) -> list[LoginSession]:
    def query() -> list[LoginSession]:
        rows = current_session().scalars(
            select(LoginSession).where(LoginSession.user_id == user_id)
        )
        return list(rows)

    return services.db.call(query)


def update_user(services: Services, user_id: str, **fields: Any) -> None:
    def update() -> None:
        user = users.get(user_id)
        assert user is not None
        for name, value in fields.items():
            setattr(user, name, value)

    services.db.call(update)
