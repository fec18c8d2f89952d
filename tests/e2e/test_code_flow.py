"""The whole code flow the way real parties run it (issue 3's end-to-end check).

A browser signs in and consents; Authlib's OAuth2Client exchanges the code with PKCE; PyJWT's
PyJWKClient verifies the ID token and the access token from /jwks.json like a resource
server; then userinfo, refresh, introspection, revocation and RP-initiated sign-out.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from playwright.sync_api import Page

from tests.e2e.conftest import LiveServer, RelyingParty, authorize_url, sign_in_with_browser

pytestmark = pytest.mark.e2e


def test_sign_in_consent_tokens_refresh_introspect_revoke_sign_out(
    live_server: LiveServer,
    relying_party: RelyingParty,
    page: Page,
    request: pytest.FixtureRequest,
) -> None:
    server = live_server.url
    callback = f"{relying_party.url}/callback"
    logged_out = f"{relying_party.url}/logged-out"
    user = live_server.make.user(email="e2e@example.com", name="Erin Example")
    client, secret = live_server.make.client(
        name="Photo Printer",
        redirect_uris=[callback],
        post_logout_redirect_uris=[logged_out],
        scope="openid profile email offline_access",
    )
    rp = OAuth2Client(
        client.id,
        secret,
        token_endpoint_auth_method="client_secret_basic",
        scope="openid profile email",
        redirect_uri=callback,
        code_challenge_method="S256",
    )
    request.addfinalizer(rp.close)
    verifier = generate_token(64)
    nonce = generate_token(20)
    url, state = rp.create_authorization_url(
        f"{server}/authorize", code_verifier=verifier, nonce=nonce
    )

    page.goto(url)
    sign_in_with_browser(page, user.email)
    page.get_by_role("button", name="Allow").wait_for()
    assert "Photo Printer" in page.content()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{callback}?**")

    answer = parse_qs(urlsplit(page.url).query)
    assert answer["state"] == [state]
    assert answer["iss"] == [server]
    token = rp.fetch_token(
        f"{server}/token", authorization_response=page.url, code_verifier=verifier
    )
    assert token["token_type"].lower() == "bearer"

    jwks = jwt.PyJWKClient(f"{server}/jwks.json")
    id_token = token["id_token"]
    id_claims = jwt.decode(
        id_token,
        jwks.get_signing_key_from_jwt(id_token).key,
        algorithms=["RS256"],
        audience=client.id,
        issuer=server,
    )
    assert id_claims["sub"] == user.id
    assert id_claims["nonce"] == nonce
    digest = hashlib.sha256(token["access_token"].encode()).digest()
    assert id_claims["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
    assert {"auth_time", "sid", "amr"} <= set(id_claims)

    access_token = token["access_token"]
    assert jwt.get_unverified_header(access_token)["typ"] == "at+jwt"
    audience = jwt.decode(access_token, options={"verify_signature": False})["aud"]
    at_claims = jwt.decode(
        access_token,
        jwks.get_signing_key_from_jwt(access_token).key,
        algorithms=["RS256"],
        audience=audience,
        issuer=server,
    )
    assert at_claims["sub"] == user.id
    assert at_claims["client_id"] == client.id
    assert set(at_claims["scope"].split()) == {"openid", "profile", "email"}
    assert {"exp", "iat", "jti"} <= set(at_claims)

    userinfo = rp.get(f"{server}/userinfo")
    assert userinfo.status_code == 200
    assert userinfo.json()["sub"] == user.id
    assert userinfo.json()["email"] == "e2e@example.com"
    assert userinfo.json()["name"] == "Erin Example"

    refreshed = rp.refresh_token(f"{server}/token", refresh_token=token["refresh_token"])
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert refreshed["access_token"] != access_token

    def introspect(value: str) -> dict[str, object]:
        response = httpx.post(
            f"{server}/introspect", data={"token": value}, auth=(client.id, secret)
        )
        assert response.status_code == 200
        return response.json()

    assert introspect(refreshed["access_token"])["active"] is True
    assert introspect(refreshed["access_token"])["sub"] == user.id
    revoked = httpx.post(
        f"{server}/revoke", data={"token": refreshed["refresh_token"]}, auth=(client.id, secret)
    )
    assert revoked.status_code == 200
    assert introspect(refreshed["refresh_token"]) == {"active": False}
    assert introspect(refreshed["access_token"]) == {"active": False}

    page.goto(
        f"{server}/logout?id_token_hint={id_token}&post_logout_redirect_uri={logged_out}&state=bye"
    )
    page.wait_for_url(f"{logged_out}?**")
    assert parse_qs(urlsplit(page.url).query)["state"] == ["bye"]

    silent, _ = rp.create_authorization_url(
        f"{server}/authorize", code_verifier=generate_token(64), prompt="none"
    )
    page.goto(silent)
    page.wait_for_url(f"{callback}?**")
    assert parse_qs(urlsplit(page.url).query)["error"] == ["login_required"]


def test_form_post_response_mode_submits_itself(
    live_server: LiveServer, relying_party: RelyingParty, page: Page
) -> None:
    """OAuth 2.0 Form Post Response Mode: the code reaches the RP in a POST body, not the URL."""
    server = live_server.url
    callback = f"{relying_party.url}/form-callback"
    user = live_server.make.user(email="form-post@example.com")
    client, _ = live_server.make.client(name="Form Poster", redirect_uris=[callback])
    url, _ = authorize_url(server, client.id, callback, state="s-123", response_mode="form_post")
    relying_party.received.clear()
    page.goto(url)
    sign_in_with_browser(page, user.email)
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(callback)
    posted = parse_qs(relying_party.received[-1].decode())
    assert posted["state"] == ["s-123"]
    assert posted["iss"] == [server]
    assert len(posted["code"][0]) >= 43
