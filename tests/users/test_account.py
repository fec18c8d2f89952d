"""/account: sessions with `End session`, apps with `Revoke`, organizations, password link.

Browser-level checks over HTTP: the page needs a live session, every button is a CSRF-checked
POST (docs/security.md H64), another person's ids answer 404 (J75), output is escaped, and what a
button ends is ended everywhere (J79, ASVS 10.7.3).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.db import current_session
from authserver.oauth import consent
from authserver.organizations.models import Membership
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.account import ago, describe_device
from authserver.users.models import User
from tests import factories
from tests.api.conftest import Grant, refresh, rows
from tests.api.conftest import grant as grant  # the fixture, shared with the API tests
from tests.conftest import ISSUER, csrf_token

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
END_FORM = re.compile(r'action="/account/sessions/([^/"]+)/end"')


@dataclass
class Browser:
    client: TestClient
    user: User

    def page(self) -> httpx.Response:
        return self.client.get("/account")

    def post(self, path: str, token: str | None = None, **headers: str) -> httpx.Response:
        data = {} if token is None else {"csrf_token": token}
        return self.client.post(path, data=data, headers=headers)

    def press(self, path: str) -> httpx.Response:
        """Submit the form for `path` from a freshly loaded page, as a person would."""
        return self.post(path, csrf_token(self.page()))

    @property
    def signed_in(self) -> bool:
        return self.page().status_code == 200


@pytest.fixture
def browser(app: Starlette, make: factories.Factory) -> Iterator[Callable[..., Browser]]:
    opened: list[TestClient] = []

    def open_browser(user: User | None = None, user_agent: str = FIREFOX) -> Browser:
        user = user or make.user(email="ada@example.com", name="Ada")
        client = TestClient(app, base_url=ISSUER, follow_redirects=False)
        client.__enter__()
        opened.append(client)
        client.headers["user-agent"] = user_agent
        page = client.get("/login")
        data = {"csrf_token": csrf_token(page), "email": user.email, "password": factories.PASSWORD}
        assert client.post("/login", data=data).status_code == 303
        return Browser(client, user)

    yield open_browser
    for client in opened:
        client.__exit__(None, None, None)


def session_ids(services: Services, user: User, *, live: bool = True) -> list[str]:
    def read() -> list[str]:
        query = select(LoginSession.id).where(LoginSession.user_id == user.id)
        if live:
            query = query.where(LoginSession.ended_at.is_(None))
        return list(current_session().scalars(query))

    return services.db.call(read)


def own_session(browser: Browser) -> str:
    """The id of this browser's session: the form marked as this device's."""
    page = browser.page().text
    row = page[: page.index("This device")].rsplit("<tr>", 1)[1] + page[page.index("This device") :]
    match = END_FORM.search(row)
    assert match
    return match.group(1)


def test_signed_out_visitors_are_sent_to_sign_in(client: TestClient) -> None:
    response = client.get("/account")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/account"


def test_the_page_shows_sessions_apps_organizations_and_password(
    browser: Callable[..., Browser],
    make: factories.Factory,
    grant: Callable[..., Grant],
    services: Services,
) -> None:
    ada = browser()
    browser(ada.user, user_agent=IPHONE)
    given = grant(ada.user, "openid email")
    organization = make.organization(ada.user, name="Analytical Engines")
    response = ada.page()
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "Ada" in page
    assert "ada@example.com" in page
    assert "Firefox on Linux" in page
    assert "Safari on iPhone" in page
    assert page.count(">End session</button>") == 3
    assert page.count("This device") == 1
    assert "testclient" in page
    assert "just now" in page
    assert "Example App" in page
    assert "See your email address" in page
    assert f'action="/account/consents/{given.consent_id}/revoke"' in page
    assert ">Revoke</button>" in page
    assert organization.name in page
    assert "Owner" in page
    assert 'href="/account/password"' in page
    assert page.count('name="csrf_token"') == page.count("<form")


def test_output_is_escaped(
    browser: Callable[..., Browser],
    make: factories.Factory,
    tokens: factories.TokenFactory,
    services: Services,
) -> None:
    """Names chosen by others (client, organization) and by the browser (User-Agent) are
    text, never markup."""
    ada = browser(user_agent='<img src=x onerror="alert(1)">')
    client, _ = make.client(name="<script>alert('app')</script>")
    services.db.call(consent.remember, ada.user.id, client.id, "openid", client.created_at)
    make.organization(ada.user, name="<b>Org</b>")
    page = ada.page().text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert" in page
    assert "<b>Org</b>" not in page
    assert "<img src=x" not in page


def test_end_another_of_my_sessions(
    browser: Callable[..., Browser], grant: Callable[..., Grant], services: Services
) -> None:
    """J79: the other browser is signed out at once, and the tokens issued in its session
    stop working."""
    ada = browser()
    phone = browser(ada.user, user_agent=IPHONE)
    target = own_session(phone)
    response = ada.press(f"/account/sessions/{target}/end")
    assert response.status_code == 303
    assert response.headers["location"] == "/account?done=session_ended"
    assert not phone.signed_in
    assert ada.signed_in
    assert "that device is signed out" in ada.page().text
    assert target not in session_ids(services, ada.user)


def test_ending_this_devices_session_signs_out(browser: Callable[..., Browser]) -> None:
    ada = browser()
    response = ada.press(f"/account/sessions/{own_session(ada)}/end")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert "sid=" in response.headers["set-cookie"]
    assert not ada.signed_in


def test_end_all_other_sessions(
    browser: Callable[..., Browser], make: factories.Factory, services: Services
) -> None:
    ada = browser()
    phones = [browser(ada.user, user_agent=IPHONE) for _ in range(2)]
    someone = browser(make.user(email="someone@example.com"))
    response = ada.press("/account/sessions/end-others")
    assert response.status_code == 303
    assert not any(phone.signed_in for phone in phones)
    assert ada.signed_in
    assert someone.signed_in


def test_revoke_an_app(
    browser: Callable[..., Browser],
    client: TestClient,
    grant: Callable[..., Grant],
    services: Services,
) -> None:
    """ASVS 10.7.3: the consent is gone and the app's refresh token no longer works."""
    ada = browser()
    given = grant(ada.user)
    assert refresh(client, given).status_code == 200
    response = ada.press(f"/account/consents/{given.consent_id}/revoke")
    assert response.status_code == 303
    assert response.headers["location"] == "/account?done=consent_revoked"
    assert services.db.call(consent.find, ada.user.id, given.client.id) is None
    assert refresh(client, given).status_code == 400
    assert "Example App" not in ada.page().text


@pytest.mark.parametrize("kind", ["session", "consent"])
def test_another_persons_ids_are_404(
    browser: Callable[..., Browser],
    make: factories.Factory,
    grant: Callable[..., Grant],
    services: Services,
    kind: str,
) -> None:
    """J75/J76: Bob's session or consent, with Ada's browser and a valid form → 404 like an
    unknown id; nothing changes."""
    ada = browser()
    bob = browser(make.user(email="bob@example.com"))
    bobs_grant = grant(bob.user)
    path = (
        f"/account/sessions/{own_session(bob)}/end"
        if kind == "session"
        else f"/account/consents/{bobs_grant.consent_id}/revoke"
    )
    before = rows(services)
    assert ada.press(path).status_code == 404
    unknown = path.replace(path.split("/")[3], "no-such-id")
    assert ada.press(unknown).status_code == 404
    assert rows(services) == before
    assert bob.signed_in


@pytest.mark.parametrize("forgery", ["no_token", "other_browsers_token", "cross_site_origin"])
def test_forged_posts_change_nothing(
    browser: Callable[..., Browser],
    make: factories.Factory,
    grant: Callable[..., Grant],
    services: Services,
    forgery: str,
) -> None:
    """H64: without this browser's CSRF token, or from another origin → 403, nothing ends."""
    ada = browser()
    phone = browser(ada.user, user_agent=IPHONE)
    given = grant(ada.user)
    mallory = browser(make.user(email="mallory@example.com"))
    paths = [
        f"/account/sessions/{own_session(phone)}/end",
        "/account/sessions/end-others",
        f"/account/consents/{given.consent_id}/revoke",
    ]
    before = rows(services)
    for path in paths:
        if forgery == "no_token":
            response = ada.post(path)
        elif forgery == "other_browsers_token":
            response = ada.post(path, csrf_token(mallory.page()))
        else:
            response = ada.post(path, csrf_token(ada.page()), origin="https://evil.example")
        assert response.status_code == 403
    assert rows(services) == before
    assert phone.signed_in


def test_posts_need_a_signed_in_browser(
    client: TestClient, browser: Callable[..., Browser], services: Services
) -> None:
    """A valid form from a browser whose session has ended acts on nobody."""
    ada = browser()
    token = csrf_token(ada.page())
    target = own_session(ada)
    assert ada.press(f"/account/sessions/{target}/end").status_code == 303
    before = rows(services)
    response = ada.post("/account/sessions/end-others", token)
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert rows(services) == before


def test_state_changes_only_on_post(browser: Callable[..., Browser], services: Services) -> None:
    """H64: no state change on GET."""
    ada = browser()
    before = rows(services)
    target = own_session(ada)
    for path in (f"/account/sessions/{target}/end", "/account/sessions/end-others"):
        assert ada.client.get(path).status_code == 405
    assert rows(services) == before


def test_memberships_show_every_role(
    browser: Callable[..., Browser], make: factories.Factory, services: Services
) -> None:
    ada = browser()
    owner = make.user(email="owner@example.com")
    other = make.organization(owner, name="Other Org")
    services.db.call(
        lambda: current_session().add(
            Membership(organization_id=other.id, user_id=ada.user.id, role="member")
        )
    )
    page = ada.page().text
    assert "Other Org" in page
    assert "Member" in page


@pytest.mark.parametrize(
    ("user_agent", "device"),
    [
        (FIREFOX, "Firefox on Linux"),
        (IPHONE, "Safari on iPhone"),
        ("Mozilla/5.0 (Windows NT 10.0) Chrome/124.0 Safari/537.36 Edg/124.0", "Edge on Windows"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Chrome/124.0 Safari/537", "Chrome on macOS"),
        ("curl/8.5.0", "curl/8.5.0"),
        ("", "Unknown device"),
    ],
)  # fmt: skip
def test_devices_are_named_for_people(user_agent: str, device: str) -> None:
    assert describe_device(user_agent) == device


def test_last_seen_reads_like_speech() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert ago(now, now) == "just now"
    assert ago(now - timedelta(minutes=1), now) == "1 minute ago"
    assert ago(now - timedelta(hours=5), now) == "5 hours ago"
    assert ago(now - timedelta(days=2, hours=3), now) == "2 days ago"
