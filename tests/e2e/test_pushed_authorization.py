"""A pushed authorization request (RFC 9126) end to end: Authlib's OAuth2Client builds the
request and pushes it to /par, Chromium carries only client_id and request_uri through
sign-in and consent, and the client redeems the code with its PKCE verifier."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from playwright.sync_api import Page

from tests.e2e.conftest import LiveServer, RelyingParty, sign_in_with_browser

pytestmark = pytest.mark.e2e


def test_a_pushed_request_signs_in_consents_and_gets_tokens(
    live_server: LiveServer,
    relying_party: RelyingParty,
    page: Page,
    request: pytest.FixtureRequest,
) -> None:
    server = live_server.url
    callback = f"{relying_party.url}/par-callback"
    user = live_server.make.user(email="par-e2e@example.com", name="Pat Pushed")
    client, secret = live_server.make.client(
        name="Pushy App",
        redirect_uris=[callback],
        scope="openid profile",
        require_pushed_authorization_requests=True,
    )
    rp = OAuth2Client(
        client.id,
        secret,
        token_endpoint_auth_method="client_secret_basic",
        scope="openid profile",
        redirect_uri=callback,
        code_challenge_method="S256",
    )
    request.addfinalizer(rp.close)
    verifier = generate_token(64)
    url, state = rp.create_authorization_url(
        f"{server}/authorize", code_verifier=verifier, nonce=generate_token(20)
    )
    params = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}

    # Not pushed: refused, since the client requires PAR.
    page.goto(url)
    assert "pushed authorization request" in page.content()

    pushed = rp.request(
        "POST", f"{server}/par", data=params, auth=(client.id, secret), withhold_token=True
    )
    assert pushed.status_code == 201, pushed.text
    request_uri = pushed.json()["request_uri"]
    query = urlencode({"client_id": client.id, "request_uri": request_uri})
    page.goto(f"{server}/authorize?{query}")
    sign_in_with_browser(page, user.email)
    page.get_by_role("button", name="Allow").wait_for()
    assert "Pushy App" in page.content()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{callback}?**")

    answer = parse_qs(urlsplit(page.url).query)
    assert answer["state"] == [state]
    token = rp.fetch_token(
        f"{server}/token", authorization_response=page.url, code_verifier=verifier
    )
    assert "id_token" in token

    # The request_uri answered once.
    page.goto(f"{server}/authorize?{query}")
    assert "invalid_request_uri" in page.content()
