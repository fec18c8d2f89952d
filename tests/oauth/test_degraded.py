"""The protocol when things go wrong around it: storage failing in the middle of an
introspection, Redis gone, and replicas whose clocks disagree (docs/security.md L88)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from starlette.testclient import TestClient

from authserver.services import Services
from authserver.users.models import User
from tests import factories
from tests.oauth.conftest import RP, Flow

LEEWAY = 30


@contextmanager
def failing_reads(services: Services, table: str) -> Iterator[list[str]]:
    """From now on every statement touching `table` fails as a dropped connection does
    (the driver's own OperationalError), the way a database that goes away mid-request
    looks to the code: the caller has already authenticated, the liveness lookup fails."""
    engine = services.db.engine
    dbapi_error = engine.dialect.loaded_dbapi.OperationalError
    failed: list[str] = []

    def fail(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if table in statement:
            failed.append(statement)
            raise dbapi_error("server closed the connection unexpectedly")

    event.listen(engine, "before_cursor_execute", fail)
    try:
        yield failed
    finally:
        event.remove(engine, "before_cursor_execute", fail)


def introspect(client: TestClient, rp: RP, token: str) -> Any:
    return client.post("/introspect", data={"token": token}, auth=rp.basic)


@pytest.mark.parametrize("redis_down", [False, True], ids=["redis-up", "redis-down"])
def test_introspection_never_says_active_while_storage_fails(
    app_with: Callable[..., TestClient],
    rp: RP,
    user: User,
    tokens: factories.TokenFactory,
    redis_down: bool,
) -> None:
    """A signature-valid, unexpired access token whose revocation state cannot be read is
    not `active: true`: 503 `temporarily_unavailable`, no claims. With Redis down too
    (a closed port), the answer is the same."""
    changes = {"redis_url": "redis://127.0.0.1:1/0"} if redis_down else {}
    client = app_with(**changes)
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    issued = tokens.access_token(user, "openid profile", client=rp.client)
    assert introspect(client, rp, issued.token).json()["active"] is True

    with failing_reads(services, "access_tokens") as failed:
        response = introspect(client, rp, issued.token)
    assert failed, "the liveness lookup never ran"
    assert response.status_code == 503, response.text
    body = response.json()
    assert body.get("active") is not True
    assert body["error"] == "temporarily_unavailable"
    assert "sub" not in body
    assert response.headers["cache-control"] == "no-store"


def test_a_failing_family_lookup_is_not_active_either(
    client: TestClient, rp: RP, user: User, tokens: factories.TokenFactory, services: Services
) -> None:
    issued = tokens.access_token(user, "openid", client=rp.client)
    with failing_reads(services, "token_families"):
        response = introspect(client, rp, issued.token)
    assert response.status_code == 503
    assert response.json().get("active") is not True


# -- replicas with clocks 30 s apart --------------------------------------------------------


@pytest.mark.parametrize("skew", [LEEWAY, -LEEWAY])
def test_a_fresh_code_works_on_a_replica_whose_clock_differs_by_30_s(
    flow: Flow, ready: RP, frozen: Callable[[float], None], skew: int
) -> None:
    code = flow.code(ready)
    frozen(skew)
    assert flow.exchange(ready, code).status_code == 200


def test_an_expired_code_stays_expired_on_a_replica_30_s_behind(
    flow: Flow, ready: RP, services: Services, frozen: Callable[[float], None]
) -> None:
    """Expired on the issuing clock by more than the skew: even a replica 30 s behind
    sees it expired."""
    code = flow.code(ready)
    expired_for = LEEWAY + 1
    frozen(services.settings.code_ttl + expired_for - LEEWAY)
    response = flow.exchange(ready, code)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("skew", [LEEWAY, -LEEWAY])
def test_a_fresh_refresh_token_and_access_token_work_30_s_apart(
    flow: Flow, ready: RP, user: User, frozen: Callable[[float], None], skew: int
) -> None:
    """A replica 30 s ahead or behind of the one that issued: the access token's `iat`
    may lie in its future (tolerated up to the skew allowance), and the refresh token is
    within its lifetime."""
    issued = flow.tokens(ready, user)
    frozen(skew)
    assert flow.userinfo(issued["access_token"]).status_code == 200
    assert flow.introspect(ready, issued["access_token"])["active"] is True
    assert flow.refresh(ready, issued["refresh_token"]).status_code == 200


def test_expired_tokens_stay_expired_beyond_the_skew(
    flow: Flow, ready: RP, user: User, services: Services, frozen: Callable[[float], None]
) -> None:
    settings = services.settings
    issued = flow.tokens(ready, user)
    frozen(settings.access_token_ttl + 1)
    assert flow.userinfo(issued["access_token"]).status_code == 401
    assert flow.introspect(ready, issued["access_token"])["active"] is False
    frozen(settings.refresh_token_idle_ttl + LEEWAY)
    response = flow.refresh(ready, issued["refresh_token"])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_a_token_from_a_clock_far_ahead_is_refused(
    flow: Flow, ready: RP, user: User, frozen: Callable[[float], None]
) -> None:
    """An access token whose `iat` is further in the future than any replica's skew is
    not ours to believe (a forged or broken clock): inactive."""
    frozen(10 * 60)
    issued = flow.tokens(ready, user)
    frozen(-10 * 60)
    assert flow.userinfo(issued["access_token"]).status_code == 401
    assert flow.introspect(ready, issued["access_token"])["active"] is False
