"""A captured session cookie stops working when the session does (docs/security.md H62), and no
cookie or form field, however odd, gets a 500 (item 95)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from authserver.db import current_session, utcnow
from authserver.services import Services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.sessions.pages import current_login
from tests import factories
from tests.conftest import csrf_token, is_signed_in, sessions_of, sign_in_by_form, update_user


def _age(services: Services, session_id: str, **fields: object) -> None:
    def update() -> None:
        row = current_session().get(LoginSession, session_id)
        assert row is not None
        for name, value in fields.items():
            setattr(row, name, value)

    services.db.call(update)


def _sign_out(client: TestClient, services: Services, session_id: str, user_id: str) -> None:
    page = client.get("/logout")
    client.post("/logout", data={"csrf_token": csrf_token(page)})


def _admin_end(client: TestClient, services: Services, session_id: str, user_id: str) -> None:
    services.db.call(sessions.end, services.app_access, session_id)


def _disable_user(client: TestClient, services: Services, session_id: str, user_id: str) -> None:
    update_user(services, user_id, is_active=False)


def _idle_timeout(client: TestClient, services: Services, session_id: str, user_id: str) -> None:
    _age(services, session_id, idle_expires_at=utcnow() - timedelta(seconds=1))


def _absolute_timeout(
    client: TestClient, services: Services, session_id: str, user_id: str
) -> None:
    _age(services, session_id, expires_at=utcnow() - timedelta(seconds=1))


@pytest.mark.parametrize(
    "end_it", [_sign_out, _admin_end, _disable_user, _idle_timeout, _absolute_timeout]
)
def test_captured_cookie_is_anonymous_once_the_session_ends(
    client: TestClient,
    make: factories.Factory,
    services: Services,
    end_it: Callable[[TestClient, Services, str, str], None],
) -> None:
    """H62 / ASVS 7.3.1-7.4.2: after sign-out, an admin ending the session, the user being
    disabled, or an idle or absolute timeout, replaying the old cookie gets nobody."""
    user = make.user()
    sign_in_by_form(client, user.email)
    captured = client.cookies["sid"]
    [row] = sessions_of(services, user.id)
    assert is_signed_in(client)

    end_it(client, services, row.id, user.id)

    attacker = TestClient(client.app, base_url=client.base_url, cookies={"sid": captured})
    assert not is_signed_in(attacker)
    assert _current_login(client.app, f"sid={captured}") is None


def _current_login(app: Starlette, cookie_header: str) -> LoginSession | None:
    """Call `current_login` the way another page would, inside a request."""
    found: list[LoginSession | None] = []

    async def page(request: Request) -> PlainTextResponse:
        found.append(await current_login(request))
        return PlainTextResponse("ok")

    probe = Starlette(routes=[Route("/probe", page)])
    probe.state.services = app.state.services
    with TestClient(probe) as client:
        client.get("/probe", headers={"cookie": cookie_header.encode("latin-1", "replace")})
    return found[0]


def test_current_login_finds_the_live_session(
    client: TestClient, make: factories.Factory, services: Services
) -> None:
    user = make.user()
    sign_in_by_form(client, user.email)

    found = _current_login(client.app, f"sid={client.cookies['sid']}")

    assert found is not None
    assert found.user_id == user.id


@pytest.mark.parametrize(
    "cookie",
    ["", "sid=", "sid=garbage", "sid=" + "A" * 4000, "sid=%00%00", 'sid="\\000"', "sid=é"],
)
def test_garbage_cookies_are_anonymous(client: TestClient, cookie: str) -> None:
    assert _current_login(client.app, cookie) is None
    response = client.get("/login", headers={"cookie": cookie.encode("latin-1", "replace")})
    assert response.status_code == 200
    assert "Sign in</button>" in response.text


@pytest.mark.parametrize(
    "fields",
    [
        {"email": "a\x00@example.com", "password": "x"},
        {"email": "a@example.com", "password": "pass\x00word"},
        {"email": "x" * 30_000 + "@example.com", "password": "x"},
        {"email": "a@example.com", "password": "p" * 60_000},
        {"email": "", "password": ""},
        {},
        {"next": "/authorize?\x00", "email": "a@example.com", "password": "x"},
    ],
)
def test_odd_form_fields_fail_like_a_wrong_password(
    client: TestClient, make: factories.Factory, fields: dict[str, str]
) -> None:
    """Item 95: NUL bytes, huge values, empty or missing fields are a failed sign-in, not a 500."""
    make.user(email="a@example.com")
    token = csrf_token(client.get("/login"))

    response = client.post("/login", data={"csrf_token": token, **fields})

    assert response.status_code == 400
    assert "Incorrect email or password." in response.text


def test_undecodable_and_non_form_bodies_are_refused_cleanly(client: TestClient) -> None:
    token = csrf_token(client.get("/login"))
    raw = b"csrf_token=" + token.encode() + b"&email=%ff%fe%00&password=\xff\xfe"
    form = {"content-type": "application/x-www-form-urlencoded"}

    undecodable = client.post("/login", content=raw, headers=form)
    as_json = client.post("/login", json={"csrf_token": token, "email": "a", "password": "b"})
    as_file = client.post(
        "/login",
        data={"csrf_token": token, "password": "b"},
        files={"email": ("email.txt", b"a@example.com")},
    )

    assert undecodable.status_code == 400
    assert as_json.status_code == 403
    assert as_file.status_code == 400
    assert "Sign in</button>" not in as_file.text
