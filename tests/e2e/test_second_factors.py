"""Second factors in Chromium: an authenticator app enrolled and used through the pages
(codes computed here from the secret the page shows), and passkeys with Chromium's virtual
authenticator (Chrome DevTools Protocol), then a whole code flow signed in with one."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page

from authserver.db import Database
from authserver.mfa import totp
from authserver.mfa.policy import ACR_MFA
from tests.e2e.conftest import (
    LiveServer,
    RelyingParty,
    authorize_url,
    running_server,
    sign_in_with_browser,
)

pytestmark = pytest.mark.e2e


def _code(secret: bytes, steps: int = 0) -> str:
    return totp.code_at(secret, time.time() + steps * totp.STEP)


def _enter_code(page: Page, code: str) -> None:
    page.get_by_label("Code from your authenticator app").fill(code)
    page.get_by_role("button", name="Verify").click()


def _sign_out(page: Page) -> None:
    page.context.clear_cookies()


def test_authenticator_app_enrolment_and_sign_in(live_server: LiveServer, page: Page) -> None:
    server = live_server.url
    user = live_server.make.user(email="totp@example.com")
    page.goto(f"{server}/login?next=/account")
    sign_in_with_browser(page, user.email)
    page.get_by_role("button", name="Set up authenticator app").click()
    qr = page.locator("#totp-qr")
    assert (qr.get_attribute("src") or "").startswith("data:image/svg+xml;base64,")
    assert qr.evaluate("img => img.complete && img.naturalWidth > 0"), "the CSP lets it render"
    shown = page.locator("#totp-secret").inner_text()
    secret = base64.b32decode(shown + "=" * (-len(shown) % 8))
    page.get_by_label("Enter the code the app shows").fill(
        "000000" if _code(secret) != "000000" else "111111"
    )
    page.get_by_role("button", name="Confirm").click()
    assert "not right" in page.locator("#totp-error").inner_text()
    page.get_by_label("Enter the code the app shows").fill(_code(secret))
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(f"{server}/account?done=totp_enrolled")
    page.get_by_role("button", name="Ask at every sign-in").click()
    page.wait_for_url(f"{server}/account?done=required_on")

    _sign_out(page)
    page.goto(f"{server}/login?next=/account")
    sign_in_with_browser(page, user.email)
    page.wait_for_url(f"{server}/login/factor?**")
    _enter_code(page, _code(secret))
    assert "not right, or it was used already" in page.locator("#factor-error").inner_text(), (
        "the enrolment's code, replayed in its window"
    )
    _enter_code(page, _code(secret, -3))
    assert page.locator("#factor-error").is_visible(), "too old"
    fresh = _code(secret, 1)
    _enter_code(page, fresh)
    page.wait_for_url(f"{server}/account")
    assert page.get_by_role("heading", name="Second factor and passkeys").is_visible()

    _sign_out(page)
    page.goto(f"{server}/login?next=/account")
    sign_in_with_browser(page, user.email)
    _enter_code(page, fresh)
    assert page.locator("#factor-error").is_visible(), "a code works once"


def test_authenticator_app_attempts_are_limited(live_server: LiveServer, page: Page) -> None:
    from tests.mfa.conftest import enrol_totp

    server = live_server.url
    user = live_server.make.user(email="limited@example.com")
    secret = enrol_totp(live_server.services, user)
    page.goto(f"{server}/login?next=/account")
    sign_in_with_browser(page, user.email)
    wrong = "000000" if _code(secret) != "000000" else "111111"
    for _ in range(5):
        _enter_code(page, wrong)
        assert page.locator("#factor-error").is_visible()
    _enter_code(page, _code(secret))
    assert "Too many attempts" in page.locator("#factor-error").inner_text()
    page.goto(f"{server}/account")
    assert "/login" in page.url, "no session without the second factor"


@pytest.fixture(scope="module")
def localhost_server(
    tmp_path_factory: pytest.TempPathFactory,
    keys_template: Path,
    database_url: str,
    schema: Database,
) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("webauthn")
    with running_server(folder, keys_template, database_url, "localhost") as s:
        yield s


@pytest.fixture
def passkey_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    yield page
    context.close()


def test_passkey_registration_then_passwordless_code_flow(
    localhost_server: LiveServer, relying_party: RelyingParty, passkey_page: Page
) -> None:
    server = localhost_server.url
    page = passkey_page
    user = localhost_server.make.user(email="passkey@example.com")
    callback = f"{relying_party.url}/callback"
    client, secret = localhost_server.make.client(
        name="Passkey App", redirect_uris=[callback], scope="openid", skip_consent=True
    )

    page.goto(f"{server}/login?next=/account")
    sign_in_with_browser(page, user.email)
    page.wait_for_url(f"{server}/account")
    page.get_by_label("Name for a new passkey").fill("Laptop")
    page.get_by_role("button", name="Add a passkey").click()
    page.wait_for_url(f"{server}/account?done=passkey_added")
    assert page.locator("#passkeys").get_by_text("Laptop").is_visible()

    page.context.clear_cookies()
    url, verifier = authorize_url(server, client.id, callback, nonce="n-1")
    page.goto(url)
    page.wait_for_url(f"{server}/login?**")
    page.get_by_role("button", name="Sign in with a passkey").click()
    page.wait_for_url(f"{callback}?**")
    answer = parse_qs(urlsplit(page.url).query)
    response = httpx.post(
        f"{server}/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"][0],
            "redirect_uri": callback,
            "code_verifier": verifier,
        },
        auth=(client.id, secret or ""),
    )
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["id_token"], options={"verify_signature": False})
    assert claims["sub"] == user.id
    assert claims["acr"] == ACR_MFA
    assert "user" in claims["amr"]
    assert "mfa" in claims["amr"]
    assert {"hwk", "swk"} & set(claims["amr"])
    assert "pwd" not in claims["amr"]


def test_acr_values_step_up_a_password_session_in_the_browser(
    live_server: LiveServer, relying_party: RelyingParty, page: Page
) -> None:
    from tests.mfa.conftest import enrol_totp

    server = live_server.url
    callback = f"{relying_party.url}/callback"
    user = live_server.make.user(email="stepup@example.com")
    secret = enrol_totp(live_server.services, user, required=False)
    client, client_secret = live_server.make.client(
        name="Bank", redirect_uris=[callback], scope="openid", skip_consent=True
    )
    page.goto(f"{server}/login?next=/account")
    sign_in_with_browser(page, user.email)
    page.wait_for_url(f"{server}/account")

    url, verifier = authorize_url(server, client.id, callback, acr_values=ACR_MFA)
    page.goto(url)
    page.wait_for_url(f"{server}/login/factor?**")
    _enter_code(page, _code(secret, 1))
    page.wait_for_url(f"{callback}?**")
    code = parse_qs(urlsplit(page.url).query)["code"][0]
    response = httpx.post(
        f"{server}/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": callback,
              "code_verifier": verifier},
        auth=(client.id, client_secret or ""),
    )  # fmt: skip
    claims = jwt.decode(response.json()["id_token"], options={"verify_signature": False})
    assert claims["acr"] == ACR_MFA
    assert claims["amr"] == ["pwd", "otp", "mfa"]
