"""Faults: docs/security.md L (88-90). A failure between consuming a code (or refresh token) and
storing what it buys rolls both back; a database that is down gets 503, not a token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver import audit
from authserver.app import create_app
from authserver.oauth import tokens
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users.models import User
from tests.conftest import ISSUER, count_rows
from tests.oauth.conftest import RP, Flow, authorization_params


class Injected(Exception):
    pass


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Injected("injected fault")


#: Each runs after the code or refresh token is consumed: the first before anything is
#: issued, the last as the very last write of the request (the audit row of save_token).
FAULT_POINTS = [
    pytest.param((tokens, "add_refresh_token"), id="storing-the-refresh-token"),
    pytest.param((audit, "record"), id="last-write"),
]


@pytest.fixture
def tolerant(app: Starlette) -> Iterator[TestClient]:
    """A client that sees the 500 instead of the exception."""
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_fault_after_consuming_a_code_leaves_it_redeemable_once(
    flow: Flow,
    ready: RP,
    tolerant: TestClient,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    point: tuple[Any, str],
) -> None:
    """docs/security.md L89: one transaction, so either everything or nothing."""
    code = flow.code(ready)
    with monkeypatch.context() as patch:
        patch.setattr(*point, boom)
        failed = Flow(tolerant, flow.sign_in_directly, flow.allow).exchange(ready, code)
    assert failed.status_code == 500
    assert "Traceback" not in failed.text
    for table in ("token_families", "refresh_tokens", "access_tokens"):
        assert count_rows(services.db, table) == 0, table
    assert flow.exchange(ready, code).status_code == 200
    assert flow.exchange(ready, code).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_fault_during_rotation_keeps_the_old_refresh_token(
    flow: Flow,
    ready: RP,
    user: User,
    tolerant: TestClient,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    point: tuple[Any, str],
) -> None:
    """docs/security.md L90: the old token is consumed iff its successor is stored."""
    issued = flow.tokens(ready, user)
    before = {t: count_rows(services.db, t) for t in ("refresh_tokens", "access_tokens")}
    with monkeypatch.context() as patch:
        patch.setattr(*point, boom)
        failed = Flow(tolerant, flow.sign_in_directly, flow.allow).refresh(
            ready, issued["refresh_token"]
        )
    assert failed.status_code == 500
    assert {t: count_rows(services.db, t) for t in before} == before
    assert flow.introspect(ready, issued["refresh_token"])["active"] is True
    refreshed = flow.refresh(ready, issued["refresh_token"])
    assert refreshed.status_code == 200
    assert flow.refresh(ready, refreshed.json()["refresh_token"]).status_code == 200


@pytest.fixture
def database_down(settings: Settings) -> Iterator[TestClient]:
    down = settings.replace(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    application = create_app(down)
    with TestClient(application, base_url=ISSUER) as test_client:
        yield test_client
    application.state.db.dispose()


def test_database_down_is_503_without_a_token(database_down: TestClient, rp: RP) -> None:
    """docs/security.md L88: 503 + Retry-After + no-store at /token; an error page at
    /authorize, which cannot check the client without the database."""
    response = database_down.post(
        "/token", data={"grant_type": "client_credentials"}, auth=rp.basic
    )
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["retry-after"]
    assert response.headers["cache-control"] == "no-store"
    page = database_down.get("/authorize", params=authorization_params(rp))
    assert page.status_code == 503
    assert "location" not in page.headers


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe=\x00", "application/x-www-form-urlencoded"),
        (b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--',
         "multipart/form-data; boundary=x"),
        (b"garbage", "multipart/form-data"),
        (b'{"grant_type": ["x"]}', "application/json"),
        (b"a=" + b"b" * 60_000, "application/x-www-form-urlencoded"),
    ],
)  # fmt: skip
def test_garbage_bodies_never_500(
    client: TestClient, signed_in: LoginSession, body: bytes, content_type: str
) -> None:
    """docs/security.md L95: invalid UTF-8, NUL, other encodings, wrong JSON types → 4xx."""
    for path in ("/authorize", "/consent?client_id=x", "/token", "/revoke", "/introspect",
                 "/userinfo"):  # fmt: skip
        response = client.post(path, content=body, headers={"Content-Type": content_type})
        assert 400 <= response.status_code < 500, (path, response.status_code)
