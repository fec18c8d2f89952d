"""Housekeeping: expired rows go, live ones stay; the periodic task does the same."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from authserver.db import utcnow
from authserver.maintenance import purge_expired, purge_periodically
from authserver.oauth import registration
from authserver.sessions import models as sessions
from tests.conftest import count_rows


def start_session(services, user_id: str, *, ago: timedelta = timedelta(0)) -> str:
    login, _ = services.db.call(
        sessions.start,
        services.digester,
        services.settings,
        user_id=user_id,
        now=utcnow() - ago,
    )
    return login.id


def test_purge_removes_expired_and_ended_sessions_only(services, make) -> None:
    user = make.user()
    live = start_session(services, user.id)
    start_session(services, user.id, ago=timedelta(days=30))
    ended = start_session(services, user.id)
    services.db.call(sessions.end, services.app_access, ended)

    counts = services.db.call(purge_expired)

    assert counts["login_sessions"] == 2
    assert count_rows(services.db, "login_sessions") == 1
    assert services.db.call(lambda: sessions.current_session().get(sessions.LoginSession, live))


def test_purge_removes_expired_initial_access_tokens_only(services) -> None:
    def make_tokens() -> None:
        for expires_in in (None, 60, 60):
            registration.create_initial_access_token(services.digester, expires_in=expires_in)

    services.db.call(make_tokens)
    later = utcnow() + timedelta(seconds=61)
    assert services.db.call(registration.purge, later) == 2
    assert count_rows(services.db, "initial_access_tokens") == 1
    assert services.db.call(purge_expired)["initial_access_tokens"] == 0


@pytest.mark.anyio
async def test_the_periodic_task_purges_without_a_restart(services, make) -> None:
    user = make.user()
    start_session(services, user.id, ago=timedelta(days=30))
    with anyio.move_on_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(purge_periodically, services.db, 0.05)
            for _ in range(250):
                if not count_rows(services.db, "login_sessions"):
                    break
                await anyio.sleep(0.02)
            tasks.cancel_scope.cancel()
    assert count_rows(services.db, "login_sessions") == 0
