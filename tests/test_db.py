"""Database engine set-up and the unit of work."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

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
