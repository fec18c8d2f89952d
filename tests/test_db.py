"""Database engine set-up and the unit of work."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from authserver.db import Database, current_session
from authserver.models import Base, User


def test_sqlite_runs_in_wal_with_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    """docs/security.md K87: WAL and busy_timeout, so concurrent writers wait instead of failing."""
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    database.dispose()


def test_a_failing_unit_of_work_leaves_nothing_behind(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    Base.metadata.create_all(database.engine)

    def half_done() -> None:
        current_session().add(User(email="a@example.com", name="A"))
        current_session().flush()
        raise RuntimeError("crash after the first write")

    with pytest.raises(RuntimeError):
        database.call(half_done)
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM users")).scalar() == 0
    database.dispose()


def test_current_session_outside_a_unit_of_work_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        current_session()


def test_a_unit_of_work_takes_the_write_lock_when_it_begins(tmp_path: Path) -> None:
    """SQLite units begin IMMEDIATE: a second writer cannot start while one is open."""
    path = tmp_path / "x.db"
    database = Database(f"sqlite:///{path}")
    Base.metadata.create_all(database.engine)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)

    def try_to_write_elsewhere() -> str:
        current_session().execute(text("SELECT 1"))
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            return str(error)
        other.execute("ROLLBACK")
        return "began"

    assert database.call(try_to_write_elsewhere) == "database is locked"
    other.close()
    database.dispose()


def test_a_locked_database_at_begin_is_sqlalchemys_error(tmp_path: Path) -> None:
    """The BEGIN goes straight to the driver; its failure is still an `OperationalError` of
    SQLAlchemy's, which the app answers with a 503 (errors.handle_database_error)."""
    path = tmp_path / "x.db"
    database = Database(f"sqlite:///{path}", pool_size=1)
    Base.metadata.create_all(database.engine)
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA busy_timeout=0")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(OperationalError, match="database is locked"):
        database.call(lambda: current_session().execute(text("SELECT 1")))
    holder.execute("ROLLBACK")
    holder.close()
    assert database.call(lambda: current_session().execute(text("SELECT 1")).scalar()) == 1
    database.dispose()
