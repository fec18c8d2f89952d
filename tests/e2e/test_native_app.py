"""A native app's redirect URI in a real browser (RFC 8252 §7.1 private-use scheme).

Chromium applies a page's CSP `form-action` to the redirect that follows a form POST; a
policy that does not cover `com.example.app:` would strand the user on the consent page.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Page

from tests.e2e.conftest import LiveServer, authorize_url, sign_in_with_browser

pytestmark = pytest.mark.e2e
NATIVE_CALLBACK = "com.example.app:/oauth/callback"


def test_consent_redirects_to_a_private_use_scheme(live_server: LiveServer, page: Page) -> None:
    """docs/security.md A3-A4 in a browser: the answer leaves for the app, nothing blocks it."""
    user = live_server.make.user(email="native@example.com")
    client, _ = live_server.make.client(
        name="Native App", redirect_uris=[NATIVE_CALLBACK], auth_method="none"
    )
    violations: list[str] = []

    def watch(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", watch)
    url, _ = authorize_url(live_server.url, client.id, NATIVE_CALLBACK, state="native-1")
    page.goto(url)
    sign_in_with_browser(page, user.email)
    # Chromium hands the redirect to the app (a request to the private-use scheme) only
    # once CSP has let it through; a blocked one never gets there and logs a violation.
    with (
        page.expect_request(lambda r: r.url.startswith(f"{NATIVE_CALLBACK}?")) as handed_over,
        page.expect_response(lambda r: "/consent" in r.url and r.request.method == "POST") as got,
    ):
        page.get_by_role("button", name="Allow").click()
    location = got.value.headers["location"]
    assert location.startswith(f"{NATIVE_CALLBACK}?")
    assert parse_qs(urlsplit(location).query)["state"] == ["native-1"]
    assert handed_over.value.url == location
    assert violations == []
