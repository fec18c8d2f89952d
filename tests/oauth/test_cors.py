"""CORS for browser-based apps: /token, /revoke and /userinfo answer the pages of a public
client's own redirect origins and no one else; the other endpoints never answer
cross-origin (docs/security.md A21, RFC 9700 §2.6)."""

from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

from authserver.oauth import cors
from authserver.oauth.clients import Client
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER
from tests.oauth.conftest import RP, SCOPE, VERIFIER, Flow

SPA_ORIGIN = "https://spa.example"
EVIL = "https://evil.example"


@pytest.fixture
def spa(make: factories.Factory) -> RP:
    client, _ = make.client(
        name="Single Page App",
        redirect_uris=[f"{SPA_ORIGIN}/callback"],
        scope=SCOPE,
        auth_method="none",
    )
    return RP(client, None, f"{SPA_ORIGIN}/callback")


@pytest.fixture
def code(flow: Flow, spa: RP, user: User, signed_in: LoginSession) -> str:
    flow.allow(user, spa)
    return flow.code(spa, scope=SCOPE)


def redeem(client: TestClient, rp: RP, code: str, origin: str | None) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": rp.redirect_uri,
        "code_verifier": VERIFIER,
    }
    headers = {"Origin": origin} if origin else {}
    if rp.secret is None:
        return client.post("/token", data={**data, "client_id": rp.id}, headers=headers)
    return client.post("/token", data=data, auth=rp.basic, headers=headers)


def assert_readable_by(response: httpx.Response, origin: str) -> None:
    assert response.headers["access-control-allow-origin"] == origin
    assert "origin" in response.headers["vary"].lower()
    assert "access-control-allow-credentials" not in response.headers


def assert_not_readable(response: httpx.Response) -> None:
    assert not any(name.startswith("access-control-") for name in response.headers)


@pytest.mark.parametrize(
    ("path", "method"), [("/token", "POST"), ("/revoke", "POST"), ("/userinfo", "GET")]
)
def test_preflight_allows_the_request_a_browser_app_makes(
    client: TestClient, path: str, method: str
) -> None:
    response = client.options(
        path,
        headers={
            "Origin": SPA_ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 204
    assert_readable_by(response, SPA_ORIGIN)
    assert method in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "content-type" in allowed


def test_public_client_redeems_and_refreshes_from_its_own_origin(
    client: TestClient, flow: Flow, spa: RP, code: str
) -> None:
    redeemed = redeem(client, spa, code, SPA_ORIGIN)
    assert redeemed.status_code == 200, redeemed.text
    assert_readable_by(redeemed, SPA_ORIGIN)

    refreshed = client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": redeemed.json()["refresh_token"],
            "client_id": spa.id,
        },
        headers={"Origin": SPA_ORIGIN},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert_readable_by(refreshed, SPA_ORIGIN)


def test_token_errors_for_an_allowed_origin_are_readable(
    client: TestClient, spa: RP, code: str
) -> None:
    """The app must be able to read `invalid_grant` to know it has to sign in again."""
    response = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": "unknown", "client_id": spa.id},
        headers={"Origin": SPA_ORIGIN},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert_readable_by(response, SPA_ORIGIN)


def test_foreign_origin_is_refused_before_the_code_is_redeemed(
    client: TestClient, spa: RP, code: str
) -> None:
    """A form POST needs no preflight, so the browser sends it whatever we answer: the
    refusal must come before redemption, and the code stays good for the real app."""
    refused = redeem(client, spa, code, EVIL)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request"
    assert_not_readable(refused)

    assert redeem(client, spa, code, None).status_code == 200


def test_confidential_client_gets_no_cors_even_from_its_redirect_origin(
    client: TestClient, flow: Flow, rp: RP, user: User, signed_in: LoginSession
) -> None:
    """A client secret has no business in a browser."""
    flow.allow(user, rp)
    code = flow.code(rp)
    refused = redeem(client, rp, code, "https://app.example.com")
    assert refused.status_code == 400
    assert_not_readable(refused)
    assert redeem(client, rp, code, None).status_code == 200


def test_same_origin_and_non_browser_requests_carry_no_cors_headers(
    client: TestClient, spa: RP, code: str
) -> None:
    response = redeem(client, spa, code, ISSUER)
    assert response.status_code == 200
    assert_not_readable(response)


def test_revocation_from_the_app_origin_only(client: TestClient, spa: RP, code: str) -> None:
    refresh_token = redeem(client, spa, code, None).json()["refresh_token"]
    form = {"token": refresh_token, "client_id": spa.id}

    refused = client.post("/revoke", data=form, headers={"Origin": EVIL})
    assert refused.status_code == 400
    assert_not_readable(refused)
    still_good = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": spa.id},
    )
    assert still_good.status_code == 200

    successor = still_good.json()["refresh_token"]
    revoked = client.post(
        "/revoke", data={**form, "token": successor}, headers={"Origin": SPA_ORIGIN}
    )
    assert revoked.status_code == 200
    assert_readable_by(revoked, SPA_ORIGIN)
    dead = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": successor, "client_id": spa.id},
    )
    assert dead.json()["error"] == "invalid_grant"


def test_userinfo_is_readable_by_the_token_client_origin_only(
    client: TestClient, flow: Flow, spa: RP, code: str
) -> None:
    access_token = redeem(client, spa, code, None).json()["access_token"]
    bearer = {"Authorization": f"Bearer {access_token}"}

    ok = client.get("/userinfo", headers={**bearer, "Origin": SPA_ORIGIN})
    assert ok.status_code == 200
    assert ok.json()["email"] == "erin@example.com"
    assert_readable_by(ok, SPA_ORIGIN)

    foreign = client.get("/userinfo", headers={**bearer, "Origin": EVIL})
    assert foreign.status_code == 400
    assert "email" not in foreign.text


def test_userinfo_challenge_is_readable_cross_origin(client: TestClient) -> None:
    """An expired token's 401 says nothing about anyone; the app reads the challenge to
    know it should refresh."""
    response = client.get("/userinfo", headers={"Authorization": "Bearer x", "Origin": EVIL})
    assert response.status_code == 401
    assert_readable_by(response, EVIL)
    assert "www-authenticate" in response.headers["access-control-expose-headers"].lower()


def test_introspection_never_answers_cross_origin(client: TestClient, rp: RP) -> None:
    """docs/security.md A21: introspection is for resource servers, not pages."""
    posted = client.post(
        "/introspect", data={"token": "x"}, auth=rp.basic, headers={"Origin": EVIL}
    )
    assert posted.status_code == 200
    assert_not_readable(posted)
    preflight = client.options(
        "/introspect", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405
    assert_not_readable(preflight)


@pytest.mark.parametrize(
    ("uri", "origin"),
    [
        ("https://SPA.example:443/cb", "https://spa.example"),
        ("http://localhost:3000/cb", "http://localhost:3000"),
        ("http://[::1]:8080/cb?x=1", "http://[::1]:8080"),
        ("com.example.app:/cb", ""),
        ("https://user@spa.example/cb", ""),
    ],
)
def test_redirect_uri_origins_are_serialised_as_browsers_send_them(uri: str, origin: str) -> None:
    client = Client(redirect_uris=[uri])
    assert cors.origins_of(client) == ({origin} if origin else set())


def test_a_browser_app_sends_dpop_proofs_from_its_own_origin(
    client: TestClient, flow: Flow, spa: RP, code: str
) -> None:
    """A browser app's DPoP (RFC 9449): the preflight allows the `DPoP` header, answers
    expose `DPoP-Nonce`, and a proof sent cross-origin binds the token like any other."""
    preflight = client.options(
        "/token",
        headers={
            "Origin": SPA_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, dpop",
        },
    )
    assert "dpop" in preflight.headers["access-control-allow-headers"].lower()
    key = factories.DPoPKey()
    bad = flow.exchange(spa, code, headers={"Origin": SPA_ORIGIN, "DPoP": "not-a-proof"})
    assert bad.json()["error"] == "invalid_dpop_proof"
    assert_readable_by(bad, SPA_ORIGIN)
    proof = key.proof("POST", f"{ISSUER}/token")
    redeemed = flow.exchange(spa, code, headers={"Origin": SPA_ORIGIN, "DPoP": proof})
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["token_type"] == "DPoP"
    assert_readable_by(redeemed, SPA_ORIGIN)
    assert "dpop-nonce" in redeemed.headers["access-control-expose-headers"].lower()
