"""Concurrency: docs/security.md K (81-84), on SQLite and on PostgreSQL.

Twenty requests go through the ASGI app at once (httpx's ASGI transport on one event loop,
Authlib and the database in the threadpool), so single use is decided by the database.

On SQLite every transaction begins `IMMEDIATE`, so whole requests queue behind one writer
and the endpoint-level races pass even without the conditional UPDATE behind single use:
only PostgreSQL (`.ci/run`, or `AUTHSERVER_TEST_DATABASE_URL`) interleaves them. The
`..._consumers_...` tests therefore race the guards themselves: threads, each with its own
connection and transaction, consume one code or rotate one refresh token at once, and
exactly one may win on every backend.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.app import create_app
from authserver.db import utcnow
from authserver.oauth import codes, tokens
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users.models import User
from tests.conftest import ISSUER, count_rows
from tests.oauth.conftest import CALLBACK, RP, VERIFIER, Flow

PARALLEL = 20


def post_all(app: Starlette, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send every request at once and wait for all answers."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            return list(await asyncio.gather(*(client.post(**r) for r in requests)))

    return asyncio.run(run())


def outcomes(responses: list[httpx.Response]) -> Counter[str]:
    return Counter(
        "ok" if r.status_code == 200 else f"{r.status_code} {r.json().get('error')}"
        for r in responses
    )


def token_request(rp: RP, **data: str) -> dict[str, Any]:
    return {"url": "/token", "data": data, "auth": rp.basic}


def test_one_code_redeemed_twenty_times_at_once(
    app: Starlette, flow: Flow, ready: RP, services: Services
) -> None:
    """docs/security.md K81: exactly one 200, the rest invalid_grant, no 5xx, at most one
    family (and the losers' replays revoke it, as a replay must)."""
    code = flow.code(ready)
    request = token_request(
        ready, grant_type="authorization_code", code=code, redirect_uri=CALLBACK,
        code_verifier=VERIFIER,
    )  # fmt: skip
    responses = post_all(app, [request] * PARALLEL)
    assert outcomes(responses) == Counter({"ok": 1, "400 invalid_grant": PARALLEL - 1})
    assert count_rows(services.db, "token_families") == 1
    assert count_rows(services.db, "access_tokens") == 1
    winner = next(r.json() for r in responses if r.status_code == 200)
    assert flow.introspect(ready, winner["access_token"]) == {"active": False}
    assert flow.introspect(ready, winner["refresh_token"]) == {"active": False}
    assert flow.userinfo(winner["access_token"]).status_code == 401


def race(attempt: Callable[[], bool]) -> list[bool]:
    """Run `attempt` on PARALLEL threads released together; each call is its own
    transaction on its own connection."""
    barrier = threading.Barrier(PARALLEL)

    def contender() -> bool:
        barrier.wait(timeout=10)
        return attempt()

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda _: contender(), range(PARALLEL)))


def test_one_of_many_consumers_of_a_code_wins(flow: Flow, ready: RP, services: Services) -> None:
    """docs/security.md K81: the conditional UPDATE lets exactly one transaction consume a
    code, whatever the others read before."""
    code = services.db.call(codes.find, services.digester, flow.code(ready))
    assert code is not None
    assert code.used_at is None
    wins = race(lambda: services.db.call(codes.redeem, code.id, utcnow()))
    assert wins.count(True) == 1


def test_one_of_many_consumers_of_a_refresh_token_wins(
    flow: Flow, ready: RP, user: User, services: Services
) -> None:
    """docs/security.md K82: rotating a refresh token is one conditional UPDATE; one
    transaction retires it, every other is told it lost."""
    issued = flow.tokens(ready, user)
    presented = services.db.call(
        tokens.find_refresh_token, services.digester, issued["refresh_token"]
    )
    assert presented is not None
    token_id = presented.row.id
    wins = race(lambda: services.db.call(tokens.mark_rotated, token_id, utcnow()))
    assert wins.count(True) == 1


def test_one_refresh_token_used_twenty_times_at_once(
    app: Starlette, flow: Flow, ready: RP, user: User, services: Services
) -> None:
    """docs/security.md K82: inside the retry window every winner gets the same successor;
    the family holds one live refresh token; no 5xx."""
    issued = flow.tokens(ready, user)
    request = token_request(
        ready, grant_type="refresh_token", refresh_token=issued["refresh_token"]
    )
    responses = post_all(app, [request] * PARALLEL)
    assert all(r.status_code < 500 for r in responses)
    successors = {r.json()["refresh_token"] for r in responses if r.status_code == 200}
    assert len(successors) == 1
    assert count_rows(services.db, "refresh_tokens") == 2
    assert flow.refresh(ready, successors.pop()).status_code == 200


@pytest.fixture
def strict_app(settings: Settings) -> Iterator[Starlette]:
    application = create_app(settings.replace(refresh_grace_seconds=0))
    yield application
    application.state.db.dispose()


def test_without_a_window_parallel_refreshes_are_reuse(
    strict_app: Starlette, flow: Flow, ready: RP, user: User
) -> None:
    """docs/security.md K82 with the window off: one winner, the others are reuse, and reuse
    detection then revokes the family deterministically."""
    issued = flow.tokens(ready, user)
    request = token_request(
        ready, grant_type="refresh_token", refresh_token=issued["refresh_token"]
    )
    responses = post_all(strict_app, [request] * PARALLEL)
    results = outcomes(responses)
    assert results == Counter({"ok": 1, "400 invalid_grant": PARALLEL - 1})
    winner = next(r.json() for r in responses if r.status_code == 200)
    assert flow.introspect(ready, winner["refresh_token"]) == {"active": False}


def test_refresh_racing_revocation_ends_revoked(
    app: Starlette, flow: Flow, ready: RP, user: User
) -> None:
    """docs/security.md K83: whatever the order, nothing issued stays active after the revoke."""
    issued = flow.tokens(ready, user)
    refresh = token_request(
        ready, grant_type="refresh_token", refresh_token=issued["refresh_token"]
    )
    revoke = {"url": "/revoke", "data": {"token": issued["refresh_token"]}, "auth": ready.basic}
    responses = post_all(app, [refresh, revoke] * (PARALLEL // 2))
    assert all(r.status_code < 500 for r in responses)
    for response in responses:
        if response.status_code == 200 and "access_token" in response.json():
            body = response.json()
            assert flow.introspect(ready, body["access_token"]) == {"active": False}
            assert flow.introspect(ready, body["refresh_token"]) == {"active": False}
    assert flow.introspect(ready, issued["refresh_token"]) == {"active": False}


def test_parallel_consent_submits_do_not_fail(
    app: Starlette, client: TestClient, rp: RP, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md K84, H65: concurrent Allow clicks of one form race without a 500, and
    exactly one gets a code; the others are told the request was already answered."""
    import re
    from urllib.parse import urlsplit

    from tests.oauth.conftest import authorization_params

    response = client.get("/authorize", params=authorization_params(rp))
    page = client.get(response.headers["location"])
    action = re.search(r'action="([^"]+)"', page.text)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    nonce = re.search(r'name="consent_nonce" value="([^"]+)"', page.text)
    assert action is not None
    assert token is not None
    assert nonce is not None
    url = action.group(1).replace("&amp;", "&")
    cookies = dict(client.cookies.items())
    form = {"csrf_token": token.group(1), "consent_nonce": nonce.group(1), "decision": "allow"}
    submit = {"url": url, "data": form, "cookies": cookies}

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as async_client:
            async_client.cookies.update(cookies)
            submit.pop("cookies", None)
            return list(await asyncio.gather(*(async_client.post(**submit) for _ in range(5))))

    results = asyncio.run(run())
    assert all(r.status_code < 500 for r in results)
    assert sorted(r.status_code for r in results) == [303, 400, 400, 400, 400]
    winner = next(r for r in results if r.status_code == 303)
    assert urlsplit(winner.headers["location"]).path == "/cb"
    assert "code=" in winner.headers["location"]
    assert all("already answered" in r.text for r in results if r.status_code == 400)
