"""Concurrency cases, driven through the ASGI app on one event loop as uvicorn runs it:
password hashing never blocks other requests, parallel sign-ins are counted exactly, and
an exhausted connection pool is a quick 503 (docs/security.md I71, L88)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from authserver.app import create_app
from authserver.settings import Settings
from tests import factories
from tests.conftest import API, ISSUER, csrf_token
from tests.factories import bearer

EMAIL = "grace@example.com"
HASH_SECONDS = 0.8


@pytest.fixture
def build(settings: Settings) -> Iterator[Callable[..., Starlette]]:
    apps: list[Starlette] = []

    def make_app(**changes: Any) -> Starlette:
        app = create_app(settings.replace(**changes))
        apps.append(app)
        return app

    yield make_app
    for app in apps:
        app.state.db.dispose()


def browser(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER)


async def sign_in_async(app: Starlette, password: str) -> int:
    """A fresh browser opens /login and submits it; the status of the answer."""
    async with browser(app) as client:
        page = await client.get("/login")
        data = {"csrf_token": csrf_token(page), "email": EMAIL, "password": password}
        return (await client.post("/login", data=data)).status_code


def test_password_hashing_does_not_block_other_requests(
    build: Callable[..., Starlette], make: factories.Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four sign-ins whose password check takes 0.8 s each (a blocking call, as argon2 is)
    run while /health is asked: /health answers at once, not after the hashes."""
    make.user(EMAIL)
    app = build(login_rate_per_ip=1000)
    passwords = app.state.services.passwords
    verify = passwords.verify

    def slow_verify(stored: str | None, password: str) -> bool:
        time.sleep(HASH_SECONDS)
        return verify(stored, password)

    monkeypatch.setattr(passwords, "verify", slow_verify)

    async def scenario() -> tuple[float, list[int], float]:
        started = time.perf_counter()
        sign_ins = [asyncio.create_task(sign_in_async(app, factories.PASSWORD)) for _ in range(4)]
        await asyncio.sleep(0.2)
        async with browser(app) as client:
            assert (await client.get("/health")).status_code == 200
        health_at = time.perf_counter() - started
        statuses = await asyncio.gather(*sign_ins)
        return health_at, statuses, time.perf_counter() - started

    health_at, statuses, total = asyncio.run(scenario())
    assert statuses == [303] * 4
    assert total >= HASH_SECONDS
    assert health_at < HASH_SECONDS, f"/health waited {health_at:.2f}s for the hashes"


def test_parallel_failed_sign_ins_are_counted_exactly(
    build: Callable[..., Starlette], make: factories.Factory
) -> None:
    """Eight wrong passwords at once against a limit of five: five are checked, three are
    refused, none slips through; then even the right password waits."""
    make.user(EMAIL)
    app = build(login_rate_per_account=5, login_rate_per_ip=1000)

    async def scenario() -> tuple[list[int], int]:
        wrong = await asyncio.gather(*(sign_in_async(app, f"wrong guess {i}") for i in range(8)))
        return list(wrong), await sign_in_async(app, factories.PASSWORD)

    wrong, right = asyncio.run(scenario())
    assert sorted(wrong) == [400] * 5 + [429] * 3
    assert right == 429


def test_parallel_valid_sign_ins_are_not_locked_out(
    build: Callable[..., Starlette], make: factories.Factory
) -> None:
    """A person signing in on several devices at once, again and again, never trips the
    failed-sign-in limit: a success forgives what it counted."""
    make.user(EMAIL)
    app = build(login_rate_per_account=5, login_rate_per_ip=1000)

    async def scenario() -> list[int]:
        statuses: list[int] = []
        for _ in range(4):
            statuses += await asyncio.gather(
                *(sign_in_async(app, factories.PASSWORD) for _ in range(5))
            )
        statuses.append(await sign_in_async(app, "one wrong guess"))
        return statuses

    statuses = asyncio.run(scenario())
    assert statuses == [303] * 20 + [400]


def test_an_exhausted_pool_is_a_quick_503(
    build: Callable[..., Starlette],
    person: Callable[..., factories.Person],
) -> None:
    """Every pooled connection held elsewhere: the request waits the pool timeout (1 s
    here), then gets 503 with Retry-After, not a hang."""
    alice = person(EMAIL)
    app = build(db_pool_size=1, db_pool_timeout=1)
    engine = app.state.db.engine
    held = [engine.connect() for _ in range(2)]

    async def call() -> httpx.Response:
        async with browser(app) as client:
            return await client.get(API + "/users/me", headers=bearer(alice.token))

    try:
        started = time.perf_counter()
        response = asyncio.run(asyncio.wait_for(call(), timeout=15))
        elapsed = time.perf_counter() - started
    finally:
        for connection in held:
            connection.close()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert response.headers["content-type"] == "application/problem+json"
    assert elapsed < 5
    async_ok = asyncio.run(call())
    assert async_ok.status_code == 200
