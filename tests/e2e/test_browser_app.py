"""A single-page app on another origin, in a real browser: Chromium's own CORS checks.

The app signs the user in through the browser, then redeems the code, calls userinfo
(an Authorization header: a real preflight) and revokes, all with `fetch` from its page.
The same calls from an origin the client never registered are blocked by the browser.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page

from tests.e2e.conftest import LiveServer, RelyingParty, authorize_url, sign_in_with_browser

pytestmark = pytest.mark.e2e

#: Runs in the app's page: `fetch` as a browser app makes it; a CORS refusal is a TypeError.
FETCH = """async ([url, init]) => {
  try {
    const response = await fetch(url, init);
    const text = await response.text();
    return {status: response.status, body: text ? JSON.parse(text) : null};
  } catch (error) {
    return {blocked: String(error)};
  }
}"""


def fetch(page: Page, url: str, **init: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(FETCH, [url, init])
    return result


def form(**fields: str) -> dict[str, Any]:
    body = "&".join(f"{name}={value}" for name, value in fields.items())
    return {
        "method": "POST",
        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
        "body": body,
    }


def test_browser_app_redeems_calls_userinfo_and_revokes_from_its_origin(
    live_server: LiveServer, relying_party: RelyingParty, page: Page
) -> None:
    server = live_server.url
    callback = f"{relying_party.url}/spa/callback"
    user = live_server.make.user(email="spa@example.com", name="Sam Page")
    client, _ = live_server.make.client(
        name="Browser App",
        redirect_uris=[callback],
        scope="openid profile email",
        auth_method="none",
    )
    url, verifier = authorize_url(server, client.id, callback, scope="openid email")
    page.goto(url)
    sign_in_with_browser(page, user.email)
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{callback}?**")
    code = parse_qs(urlsplit(page.url).query)["code"][0]

    stranger = page.context.new_page()
    stranger.goto(f"{relying_party.url.replace('127.0.0.1', 'localhost')}/elsewhere")
    exchange = form(
        grant_type="authorization_code",
        code=code,
        redirect_uri=callback,
        code_verifier=verifier,
        client_id=client.id,
    )
    assert "blocked" in fetch(stranger, f"{server}/token", **exchange)

    tokens = fetch(page, f"{server}/token", **exchange)
    assert tokens["status"] == 200, tokens
    access_token = tokens["body"]["access_token"]

    bearer = {"headers": {"Authorization": f"Bearer {access_token}"}}
    claims = fetch(page, f"{server}/userinfo", **bearer)
    assert claims["status"] == 200, claims
    assert claims["body"]["email"] == "spa@example.com"
    refused = fetch(stranger, f"{server}/userinfo", **bearer)
    assert refused["status"] == 400, refused
    assert refused["body"]["error"] == "invalid_request"

    revoked = fetch(page, f"{server}/revoke", **form(token=access_token, client_id=client.id))
    assert revoked["status"] == 200, revoked
    after = fetch(page, f"{server}/userinfo", **bearer)
    assert after["status"] == 401
