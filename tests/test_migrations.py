"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from authserver.cli import alembic_config
from authserver.db import current_session
from authserver.models import Base
from tests.conftest import require_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new empty database; on PostgreSQL a throwaway one beside the test database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    server = make_url(require_postgres())
    name = f"authserver_migrations_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def schema_drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(empty_database: str) -> None:
    command.upgrade(alembic_config(empty_database), "head")
    assert schema_drift(empty_database) == []
    assert table_names(empty_database) >= set(Base.metadata.tables)


def test_downgrade_to_base_removes_everything(empty_database: str) -> None:
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    assert table_names(empty_database) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert schema_drift(empty_database) == []


def test_widening_client_ids_keeps_every_row(empty_database: str) -> None:
    """Revision 0005 rebuilds the client tables on SQLite: nothing may cascade away, and a
    client id as long as a metadata document URL fits afterwards."""
    from authserver.db import Database, utcnow
    from authserver.oauth import clients, consent
    from authserver.users import models as users

    config = alembic_config(empty_database)
    command.upgrade(config, "0002")
    database = Database(empty_database)

    def seed() -> None:
        """The client goes in through the columns revision 0002 has: the model may have
        grown columns since, which a later revision adds."""
        user = users.create(email="kept@example.com", password_hash=None)
        now = utcnow()
        names = ("redirect_uris", "post_logout_redirect_uris", "grant_types", "response_types")
        plain = ("id", "secret_digest", "name", "scope", "token_endpoint_auth_method",
                 "id_token_signed_response_alg", "info", "skip_consent", "resource_server",
                 "refresh_rotation", "is_active", "dynamically_registered", "created_at",
                 "updated_at")  # fmt: skip
        table = sa.table(
            "clients",
            *(sa.column(n, sa.JSON()) for n in (*names, "info")),
            *(sa.column(n) for n in plain if n != "info"),
        )
        current_session().execute(
            table.insert().values(
                id="kept-client", secret_digest=None, name="Kept",
                redirect_uris=["https://a.example/cb"], post_logout_redirect_uris=[],
                grant_types=["authorization_code"], response_types=["code"], scope="openid",
                token_endpoint_auth_method="none", id_token_signed_response_alg="RS256",
                info={}, skip_consent=False, resource_server=False, refresh_rotation=True,
                is_active=True, dynamically_registered=False, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        consent.remember(user.id, "kept-client", "openid", now)

    try:
        database.call(seed)
        command.upgrade(config, "head")
        long_id = "https://client.example/" + "a" * 200

        def add_long() -> None:
            user = users.find_by_email("kept@example.com")
            assert user is not None
            database_session = current_session()
            database_session.add(
                clients.Client(id=long_id, name="Long", token_endpoint_auth_method="none", info={})
            )
            database_session.flush()
            consent.remember(user.id, long_id, "openid", utcnow())

        database.call(add_long)
        with database.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT COUNT(*) FROM consents").scalar_one() == 2
            assert connection.exec_driver_sql("SELECT COUNT(*) FROM clients").scalar_one() == 2
            if connection.dialect.name == "sqlite":
                assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    finally:
        database.dispose()
    assert schema_drift(empty_database) == []
