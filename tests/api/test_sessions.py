"""`/api/v1/sessions`: my browser sessions and ending them (docs/security.md J79, ASVS 7.4.5)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver.services import Services
from authserver.sessions import models as sessions
from tests import factories
from tests.api.conftest import Grant, introspect, refresh, rows
from tests.conftest import ISSUER, Api, is_problem, sign_in_by_form
from tests.factories import Person

SESSION_KEYS = {"id", "device", "ip", "created_at", "last_seen_at", "current"}


@pytest.fixture
def browser(app: Starlette) -> Iterator[Callable[[str], TestClient]]:
    """Browsers of their own (cookie jars apart from `client`), signed in through /login."""
    opened: list[TestClient] = []

    def signed_in_browser(email: str) -> TestClient:
        browser = TestClient(app, base_url=ISSUER, follow_redirects=False)
        browser.__enter__()
        opened.append(browser)
        browser.headers["user-agent"] = "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"
        assert sign_in_by_form(browser, email).status_code == 303
        return browser

    yield signed_in_browser
    for browser in opened:
        browser.__exit__(None, None, None)


def signed_in(browser: TestClient) -> bool:
    return browser.get("/account").status_code == 200


def my_sessions(api: Api, who: Person) -> list[dict[str, object]]:
    response = api.call("GET", "/sessions", who.token)
    assert response.status_code == 200
    return response.json()["items"]


def test_list_my_live_sessions(
    api: Api,
    alice: Person,
    bob: Person,
    browser: Callable[[str], TestClient],
    services: Services,
) -> None:
    """Mine only, live only, the token's own marked `current`, the device as the browser
    named itself."""
    browser("alice@example.com")
    browser("bob@example.com")
    browser("alice@example.com")
    items = my_sessions(api, alice)
    assert len(items) == 3
    assert all(set(item) == SESSION_KEYS for item in items)
    assert [item["id"] for item in items if item["current"]] == [alice.issued.session_id]
    devices = {item["device"] for item in items if not item["current"]}
    assert devices == {"Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"}
    ended = next(item["id"] for item in items if not item["current"])
    assert api.call("DELETE", f"/sessions/{ended}", alice.token).status_code == 204
    remaining = {item["id"] for item in my_sessions(api, alice)}
    assert len(remaining) == 2
    assert ended not in remaining


def test_list_sessions_in_pages(api: Api, alice: Person, tokens: factories.TokenFactory) -> None:
    for _ in range(4):
        tokens.access_token(alice.user, "openid")
    first = api.call("GET", "/sessions?page_size=3", alice.token).json()
    assert len(first["items"]) == 3
    rest = api.call("GET", f"/sessions?page_size=3&cursor={first['next_cursor']}", alice.token)
    second = rest.json()
    assert len(second["items"]) == 2
    assert second["next_cursor"] is None
    assert not {i["id"] for i in first["items"]} & {i["id"] for i in second["items"]}


def test_ending_a_session_signs_that_browser_out_and_kills_its_tokens(
    api: Api,
    alice: Person,
    browser: Callable[[str], TestClient],
    grant: Callable[..., Grant],
    services: Services,
) -> None:
    """J79: the browser is anonymous on its next request; the refresh token bound to the
    session fails at /token and its access token introspects inactive."""
    elsewhere = browser("alice@example.com")
    assert signed_in(elsewhere)
    app_grant = grant(alice.user)
    assert refresh(api.client, app_grant).status_code == 200
    target = app_grant.issued.session_id
    assert api.call("DELETE", f"/sessions/{target}", alice.token).status_code == 204
    assert refresh(api.client, app_grant).status_code == 400
    assert not introspect(api.client, app_grant, app_grant.issued.token)
    browser_session = next(item["id"] for item in my_sessions(api, alice) if not item["current"])
    assert api.call("DELETE", f"/sessions/{browser_session}", alice.token).status_code == 204
    assert not signed_in(elsewhere)
    assert api.call("GET", "/users/me", alice.token).status_code == 200


def test_offline_grants_outlive_the_session(
    api: Api, alice: Person, grant: Callable[..., Grant]
) -> None:
    """OIDC Core §11: `offline_access` is consent to act when the person is away; it ends
    with a consent revocation, a password change or a deactivation instead."""
    offline = grant(alice.user, offline=True)
    assert (
        api.call("DELETE", f"/sessions/{offline.issued.session_id}", alice.token).status_code == 204
    )
    assert refresh(api.client, offline).status_code == 200


def test_ending_my_own_session_ends_my_token(api: Api, alice: Person) -> None:
    path = f"/sessions/{alice.issued.session_id}"
    assert api.call("DELETE", path, alice.token).status_code == 204
    assert is_problem(api.call("GET", "/sessions", alice.token), 401)


def test_end_all_my_other_sessions(
    api: Api,
    alice: Person,
    bob: Person,
    browser: Callable[[str], TestClient],
    services: Services,
) -> None:
    first, second = browser("alice@example.com"), browser("alice@example.com")
    bobs = browser("bob@example.com")
    response = api.call("DELETE", "/sessions", alice.token)
    assert response.status_code == 200
    assert response.json() == {"ended": 2}
    assert not signed_in(first)
    assert not signed_in(second)
    assert signed_in(bobs)
    assert [item["id"] for item in my_sessions(api, alice)] == [alice.issued.session_id]
    assert api.call("DELETE", "/sessions", alice.token).json() == {"ended": 0}


def test_an_ended_or_unknown_session_is_404(api: Api, alice: Person, services: Services) -> None:
    other = services.db.call(
        sessions.start, services.digester, services.settings, user_id=alice.user.id
    )[0]
    assert api.call("DELETE", f"/sessions/{other.id}", alice.token).status_code == 204
    for session_id in (other.id, "no-such-session", "x" * 65, "a%00b"):
        assert is_problem(api.call("DELETE", f"/sessions/{session_id}", alice.token), 404)


def test_admin_lists_and_ends_a_users_sessions(
    api: Api,
    admin: Person,
    alice: Person,
    browser: Callable[[str], TestClient],
    services: Services,
) -> None:
    elsewhere = browser("alice@example.com")
    listed = api.call("GET", f"/users/{alice.user.id}/sessions", admin.token)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert len(items) == 2
    assert not any(item["current"] for item in items)
    target = next(item["id"] for item in items if item["id"] != alice.issued.session_id)
    path = f"/users/{alice.user.id}/sessions/{target}"
    assert api.call("DELETE", path, admin.token).status_code == 204
    assert not signed_in(elsewhere)
    assert is_problem(api.call("DELETE", path, admin.token), 404)
    assert is_problem(api.call("GET", "/users/no-such-user/sessions", admin.token), 404)


def test_admin_cannot_end_a_session_under_the_wrong_user(
    api: Api, admin: Person, alice: Person, bob: Person, services: Services
) -> None:
    """The session must belong to the user in the path: no ending Bob's under Alice's id."""
    before = rows(services)
    path = f"/users/{alice.user.id}/sessions/{bob.issued.session_id}"
    assert is_problem(api.call("DELETE", path, admin.token), 404)
    assert rows(services) == before
