"""The organization round trip in a real browser (issue 4): a member of two organizations
picks the second on the consent page, and the relying party's tokens name it."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from playwright.sync_api import Page

from authserver.organizations import models as orgs
from tests.e2e.conftest import LiveServer, RelyingParty, sign_in_with_browser

pytestmark = pytest.mark.e2e


def test_member_of_two_organizations_picks_the_second(
    live_server: LiveServer,
    relying_party: RelyingParty,
    page: Page,
    request: pytest.FixtureRequest,
) -> None:
    server = live_server.url
    callback = f"{relying_party.url}/org-callback"
    user = live_server.make.user(email="two-orgs@example.com", name="Tess Twoorgs")
    first = live_server.make.organization(user, name="Acme")
    second = live_server.make.organization(live_server.make.user(), name="Beta Labs")
    live_server.services.db.call(
        lambda: orgs.add_member(
            orgs.access(second.id, None, admin=True), email=user.email, role="admin"
        )
    )
    client, secret = live_server.make.client(
        name="Team Board", redirect_uris=[callback], scope="openid profile organization"
    )
    rp = OAuth2Client(
        client.id,
        secret,
        token_endpoint_auth_method="client_secret_basic",
        scope="openid profile organization",
        redirect_uri=callback,
        code_challenge_method="S256",
    )
    request.addfinalizer(rp.close)
    verifier = generate_token(64)
    url, state = rp.create_authorization_url(
        f"{server}/authorize", code_verifier=verifier, nonce=generate_token(20)
    )

    page.goto(url)
    sign_in_with_browser(page, user.email)
    chooser = page.get_by_label("Organization")
    chooser.wait_for()
    assert chooser.locator("option").all_inner_texts() == ["Acme (Owner)", "Beta Labs (Admin)"]
    assert chooser.input_value() == first.id
    chooser.select_option(label="Beta Labs (Admin)")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(f"{callback}?**")

    assert parse_qs(urlsplit(page.url).query)["state"] == [state]
    token = rp.fetch_token(
        f"{server}/token", authorization_response=page.url, code_verifier=verifier
    )
    jwks = jwt.PyJWKClient(f"{server}/jwks.json")
    id_claims = jwt.decode(
        token["id_token"],
        jwks.get_signing_key_from_jwt(token["id_token"]).key,
        algorithms=["RS256"],
        audience=client.id,
        issuer=server,
    )
    access_token = token["access_token"]
    at_claims = jwt.decode(
        access_token,
        jwks.get_signing_key_from_jwt(access_token).key,
        algorithms=["RS256"],
        audience=live_server.settings.api_audience,
        issuer=server,
    )
    for claims in (id_claims, at_claims):
        assert claims["sub"] == user.id
        assert claims["org_id"] == second.id
        assert claims["org_role"] == "admin"
    userinfo = rp.get(f"{server}/userinfo").json()
    assert (userinfo["org_id"], userinfo["org_role"]) == (second.id, "admin")
