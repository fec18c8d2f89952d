"""/login over HTTP: the page, the cookie, redirects, CSRF, fixation, enumeration, passwords."""

from __future__ import annotations

import re
import secrets
from http.cookies import SimpleCookie

import httpx
import pytest
from argon2 import PasswordHasher
from starlette.testclient import TestClient

from authserver.security import Passwords
from authserver.services import Services
from authserver.settings import Settings
from authserver.users import models as users
from tests import factories
from tests.conftest import (
    audit_events,
    count_rows,
    csrf_token,
    is_signed_in,
    sessions_of,
    sign_in_by_form,
    update_user,
)

NEXT = "/authorize?response_type=code&client_id=abc&state=xyz&login_hint=bob%40example.com"


def session_cookie(response: httpx.Response) -> SimpleCookie:
    cookies = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookies.load(header)
    return cookies


def test_page_names_its_fields_and_carries_a_csrf_token(client: TestClient) -> None:
    """SPEC §6: inputs labelled Email and Password, a Sign in button; H66 headers."""
    page = client.get("/login")

    assert page.status_code == 200
    assert '<label for="email">Email</label>' in page.text
    assert '<label for="password">Password</label>' in page.text
    assert '<button type="submit">Sign in</button>' in page.text
    assert csrf_token(page)
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_login_hint_prefills_email(client: TestClient) -> None:
    direct = client.get("/login", params={"login_hint": "alice@example.com"})
    via_next = client.get("/login", params={"next": NEXT})

    assert 'value="alice@example.com"' in direct.text
    assert 'value="bob@example.com"' in via_next.text
    assert f'name="next" value="{NEXT.replace("&", "&amp;")}"' in via_next.text


def test_sign_in_sets_a_server_side_session_cookie(
    client: TestClient, make: factories.Factory, services: Services
) -> None:
    """H61 (http issuer): `sid`, HttpOnly, SameSite=Lax, Path=/, no Secure on plain http."""
    user = make.user()

    response = sign_in_by_form(client, user.email)

    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    morsel = session_cookie(response)["sid"]
    assert morsel["httponly"] is True
    assert morsel["samesite"].lower() == "lax"
    assert morsel["path"] == "/"
    assert not morsel["secure"]
    assert not morsel["max-age"]
    [row] = sessions_of(services, user.id)
    assert row.digest != morsel.value
    assert len(morsel.value) >= 43
    assert is_signed_in(client)
    [event] = audit_events(services, "login.succeeded")
    assert (event.actor_id, event.target_id) == (user.id, row.id)


def test_https_cookie_is_host_prefixed_and_secure(
    https_client: TestClient, https_settings: Settings, make: factories.Factory
) -> None:
    """H61: under https the cookie is `__Host-sid`, Secure, HttpOnly, Path=/, SameSite=Lax."""
    user = make.user()

    response = sign_in_by_form(https_client, user.email)

    assert response.status_code == 303
    morsel = session_cookie(response)["__Host-sid"]
    assert morsel["secure"] is True
    assert morsel["httponly"] is True
    assert morsel["path"] == "/"
    assert morsel["samesite"].lower() == "lax"
    assert not morsel["domain"]
    assert "sid" not in session_cookie(response)
    assert is_signed_in(https_client)


def test_redirects_to_a_pending_authorization_with_303(
    client: TestClient, make: factories.Factory
) -> None:
    """RFC 9700 §4.12: 303 (never 307, which would resend the password to the next URL)."""
    user = make.user()

    response = sign_in_by_form(client, user.email, next=NEXT)

    assert response.status_code == 303
    assert response.headers["location"] == NEXT


@pytest.mark.parametrize(
    "next_url",
    [
        "//evil.com",
        "https://evil.com",
        "/\\evil.com",
        "%2F%2Fevil.com",
        "javascript:alert(1)",
        "/account/../evil",
        "/accounts",
        "/authorize",
        "/authorizeX?a=1",
        "http://127.0.0.1:8000/authorize?a=1",
        "/authorize?a=1\r\nSet-Cookie: x=1",
        "/authorize?a=1\\@evil.com",
        " /authorize?a=1",
        "/authorize?" + "a" * 9000,
    ],
)
def test_foreign_or_odd_next_is_ignored(
    client: TestClient, make: factories.Factory, next_url: str
) -> None:
    """H67 / ASVS 3.7.2: anything but a same-origin /authorize? path goes to the landing page."""
    user = make.user()

    page = client.get("/login", params={"next": next_url})
    response = sign_in_by_form(client, user.email, next=next_url)

    assert 'name="next"' not in page.text
    assert response.status_code == 303
    assert response.headers["location"] == "/login"


def test_signed_in_landing_offers_sign_out(client: TestClient, make: factories.Factory) -> None:
    user = make.user(email="carol@example.com")
    sign_in_by_form(client, user.email)

    page = client.get("/login")

    assert "You are signed in as <strong>carol@example.com</strong>" in page.text
    assert 'action="/logout"' in page.text
    assert "Sign out</button>" in page.text


@pytest.mark.parametrize("case", ["missing", "foreign", "cross-origin", "garbage"])
def test_csrf_failures_are_refused_and_change_nothing(
    client: TestClient,
    app_with,
    make: factories.Factory,
    services: Services,
    case: str,
) -> None:
    """H64: a POST without our token, with another browser's token, or from another origin is a
    403 and signs nobody in."""
    user = make.user()
    token = csrf_token(client.get("/login"))
    data = {"email": user.email, "password": factories.PASSWORD, "csrf_token": token}
    headers = {}
    if case == "missing":
        del data["csrf_token"]
    elif case == "foreign":
        other_browser = app_with()
        data["csrf_token"] = csrf_token(other_browser.get("/login"))
    elif case == "cross-origin":
        headers["origin"] = "https://evil.example"
    else:
        data["csrf_token"] = "x" * 5000

    response = client.post("/login", data=data, headers=headers)

    assert response.status_code == 403
    assert "set-cookie" not in response.headers or "sid=" not in response.headers["set-cookie"]
    assert count_rows(services.db, "login_sessions") == 0
    assert not is_signed_in(client)


def test_a_planted_session_id_is_useless_after_sign_in(
    client: TestClient, make: factories.Factory, services: Services
) -> None:
    """H63 (session fixation, Keycloak CVE-2026-7507): the id set before sign-in is not the one
    after, and it does not open the session afterwards."""
    user = make.user()
    client.cookies.set("sid", "planted-by-attacker")

    response = sign_in_by_form(client, user.email)

    new_id = session_cookie(response)["sid"].value
    assert new_id != "planted-by-attacker"
    attacker = TestClient(
        client.app, base_url=client.base_url, cookies={"sid": "planted-by-attacker"}
    )
    assert not is_signed_in(attacker)


def test_signing_in_again_ends_the_browsers_previous_session(
    client: TestClient, make: factories.Factory, services: Services
) -> None:
    """H63: every sign-in gets a new id; the one before it stops working."""
    alice, bob = make.user(), make.user()
    first = session_cookie(sign_in_by_form(client, alice.email))["sid"].value

    second = session_cookie(sign_in_by_form(client, bob.email))["sid"].value

    assert first != second
    [old] = sessions_of(services, alice.id)
    assert old.ended_at is not None
    replay = TestClient(client.app, base_url=client.base_url, cookies={"sid": first})
    assert not is_signed_in(replay)


def _normalized(response: httpx.Response, email: str) -> str:
    return re.sub(r'name="csrf_token" value="[^"]+"', "", response.text).replace(email, "EMAIL")


def test_unknown_email_wrong_password_and_disabled_account_look_the_same(
    client: TestClient, make: factories.Factory, services: Services, monkeypatch
) -> None:
    """I72 / ASVS 6.3.8: same status, same body, and one argon2 verification each (the timing
    comes from that verification), whatever went wrong. The audit trail tells admins which
    account was tried, never the password. No clock is read: a spy on the argon2 hasher shows
    that every branch verifies a real argon2id hash (a dummy one when there is none), which is
    what makes the timings alike, and stays true on a machine however loaded."""
    # A password of this test's own: the spy is process-wide, and a hash another test left
    # running on the argon2 threads must not be counted as one of these attempts.
    right = f"right password {secrets.token_hex(8)}"
    known = make.user(email="known@example.com", password=right)
    disabled = make.user(email="disabled@example.com", password=right)
    no_password = make.user(email="nopassword@example.com")
    update_user(services, disabled.id, is_active=False)
    update_user(services, no_password.id, password_hash=None)
    verified: list[str] = []
    real_verify = PasswordHasher.verify

    def spy(hasher: PasswordHasher, hash: str, password: str) -> bool:
        if password in attempts.values():
            verified.append(hash)
        return real_verify(hasher, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)

    attempts = {
        "nobody@example.com": f"whatever password {right}",
        known.email: f"wrong password {right}",
        disabled.email: right,
        no_password.email: right,
    }
    responses = {}
    for email, password in attempts.items():
        before = len(verified)
        responses[email] = sign_in_by_form(client, email, password)
        assert len(verified) == before + 1, f"{email}: not exactly one argon2 verification"
        assert verified[-1].startswith("$argon2id$"), email

    statuses = {r.status_code for r in responses.values()}
    bodies = {_normalized(r, email) for email, r in responses.items()}
    assert statuses == {400}
    assert len(bodies) == 1
    assert "Incorrect email or password." in next(iter(bodies))
    failed = audit_events(services, "login.failed")
    assert sorted(e.actor_id or "" for e in failed) == sorted(
        ["", known.id, disabled.id, no_password.id]
    )
    assert sorted(e.details["reason"] for e in failed) == [
        "account_disabled",
        "bad_password",
        "bad_password",
        "unknown_account",
    ]
    for event in failed:
        for password in attempts.values():
            assert password not in repr(event.details)
    assert count_rows(services.db, "login_sessions") == 0


def test_long_passwords_are_compared_whole(client: TestClient, make: factories.Factory) -> None:
    """I70: a 128-character password works; one differing only at character 73 (where bcrypt
    would stop reading) fails, and so does a case-folded one."""
    password = "a" * 72 + "b" + "c" * 55
    user = make.user(password=password)

    wrong_at_73 = sign_in_by_form(client, user.email, "a" * 72 + "X" + "c" * 55)
    upper = sign_in_by_form(client, user.email, password.upper())
    right = sign_in_by_form(client, user.email, password)

    assert len(password) == 128
    assert (wrong_at_73.status_code, upper.status_code) == (400, 400)
    assert right.status_code == 303


def test_email_is_case_insensitive_but_password_is_not(
    client: TestClient, make: factories.Factory
) -> None:
    user = make.user(email="dave@example.com")

    assert sign_in_by_form(client, " Dave@Example.COM ").status_code == 303
    assert user.email == "dave@example.com"


def test_sign_in_rehashes_when_parameters_were_raised(
    app_with, make: factories.Factory, services: Services
) -> None:
    """I69: a hash made with yesterday's cost is replaced by today's at the next sign-in."""
    user = make.user()
    assert "t=1" in (user.password_hash or "")
    stronger = app_with(password_time_cost=2)

    response = sign_in_by_form(stronger, user.email)

    assert response.status_code == 303
    stored = _stored_hash(services, user.id)
    assert stored.startswith("$argon2id$")
    assert ",t=2," in stored
    assert Passwords(2, 8, 1).verify(stored, factories.PASSWORD)


def _stored_hash(services: Services, user_id: str) -> str:
    found = services.db.call(users.get, user_id)
    assert found is not None
    assert found.password_hash
    return found.password_hash


def test_the_account_page_is_a_valid_return_target(client, make) -> None:
    """Signing in from /account comes back to /account; nothing else outside /authorize."""
    user = make.user()
    assert client.get("/account").headers["location"] == "/login?next=/account"
    response = sign_in_by_form(client, user.email, next="/account")
    assert response.status_code == 303
    assert response.headers["location"] == "/account"


def test_unverified_people_sign_in_by_default(
    client: TestClient, make: factories.Factory, services: Services
) -> None:
    """`AUTHSERVER_REQUIRE_VERIFIED_EMAIL` is off by default: an unverified address signs in
    (the claims say `email_verified: false`)."""
    user = make.user(email="new@example.com")
    assert not user.email_verified
    assert sign_in_by_form(client, "new@example.com").status_code == 303
    assert len(sessions_of(services, user.id)) == 1


def test_with_required_verification_an_unverified_address_gets_no_session(
    app_with, make: factories.Factory, services: Services
) -> None:
    client = app_with(require_verified_email=True)
    user = make.user(email="new@example.com")
    answer = sign_in_by_form(client, "new@example.com")
    assert answer.status_code == 403
    assert "Verify your email address" in answer.text
    assert 'href="/verify-email/resend"' in answer.text
    assert "set-cookie" not in answer.headers or "sid" not in answer.headers["set-cookie"]
    assert sessions_of(services, user.id) == []
    assert not is_signed_in(client)
    (event,) = audit_events(services, "login.failed")
    assert event.details["reason"] == "email_unverified"

    wrong = sign_in_by_form(client, "new@example.com", "not the password at all")
    assert wrong.status_code == 400
    assert "Verify your email" not in wrong.text

    update_user(services, user.id, email_verified=True)
    assert sign_in_by_form(client, "new@example.com").status_code == 303
    assert len(sessions_of(services, user.id)) == 1
