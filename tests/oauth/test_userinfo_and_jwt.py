"""UserInfo, bearer-token verification, client_credentials and discovery: docs/security.md D42
and F (49, 51-54)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.testclient import TestClient

from authserver import db
from authserver.app import create_app
from authserver.oauth import token_format
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users.models import User
from tests import factories
from tests.conftest import API_CHALLENGE, ISSUER
from tests.oauth.conftest import CALLBACK, RP, Flow
from tests.oauth.test_token import assert_oauth_error


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
        signature,
    )


def assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'{API_CHALLENGE}, error="invalid_token"')
    assert 'error="invalid_token"' in challenge
    assert response.headers["cache-control"] == "no-store"


# -- userinfo ------------------------------------------------------------------------------


def test_userinfo_returns_claims_of_granted_scopes(
    flow: Flow, issued: dict[str, Any], user: User
) -> None:
    """docs/security.md F54 (oidcc-userinfo-get, -post-header, oidcc-scope-profile/-email)."""
    expected = {
        "sub": user.id,
        "name": "Erin Example",
        "email": "erin@example.com",
        "email_verified": True,
    }
    got = flow.userinfo(issued["access_token"])
    assert got.status_code == 200
    assert got.json() == expected
    assert got.headers["cache-control"] == "no-store"
    posted = flow.client.post(
        "/userinfo", headers={"Authorization": f"Bearer {issued['access_token']}"}
    )
    assert posted.json() == expected
    id_claims = jwt.decode(issued["id_token"], options={"verify_signature": False})
    assert got.json()["sub"] == id_claims["sub"]


def test_userinfo_with_openid_only_is_just_sub(
    flow: Flow, rp: RP, user: User, signed_in: LoginSession
) -> None:
    body = flow.tokens(rp, user, scope="openid")
    assert flow.userinfo(body["access_token"]).json() == {"sub": user.id}


def test_userinfo_without_a_token_is_a_bare_challenge(client: TestClient) -> None:
    """docs/security.md F54, RFC 6750 §3.1: no credentials, no error code."""
    response = client.get("/userinfo")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == API_CHALLENGE
    basic = client.get("/userinfo", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401


def test_userinfo_refuses_tokens_outside_the_header(flow: Flow, issued: dict[str, Any]) -> None:
    """docs/security.md F54 (OAuth 2.1 §5.1; FAPI 2.0 RS)."""
    query = flow.client.get("/userinfo", params={"access_token": issued["access_token"]})
    assert query.status_code == 400
    assert 'error="invalid_request"' in query.headers["www-authenticate"]
    body = flow.client.post("/userinfo", data={"access_token": issued["access_token"]})
    assert body.status_code == 400


def test_userinfo_without_openid_scope_is_insufficient_scope(
    make: factories.Factory, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    """docs/security.md F54."""
    client, secret = make.client(redirect_uris=[CALLBACK], scope="profile")
    rp = RP(client, secret)
    body = flow.tokens(rp, user, scope="profile", nonce=None)
    assert "id_token" not in body
    response = flow.userinfo(body["access_token"])
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_id_token_is_not_a_bearer_token(flow: Flow, issued: dict[str, Any]) -> None:
    """docs/security.md F52: typ confusion (ASVS 9.2.2)."""
    assert_invalid_token(flow.userinfo(issued["id_token"]))


def test_expired_or_revoked_token_is_invalid(
    flow: Flow,
    rp: RP,
    issued: dict[str, Any],
    services: Services,
    frozen: Callable[[float], None],
) -> None:
    flow.client.post("/revoke", data={"token": issued["access_token"]}, auth=rp.basic)
    assert_invalid_token(flow.userinfo(issued["access_token"]))
    fresh = flow.refresh(rp, issued["refresh_token"]).json()
    frozen(services.settings.access_token_ttl + 1)
    assert_invalid_token(flow.userinfo(fresh["access_token"]))


def _hs256_with_public_key(services: Services, token: str) -> str:
    header, payload, _ = parts(token)
    kid = header["kid"]
    jwk = next(k for k in services.keystore.public_jwks()["keys"] if k["kid"] == kid)
    public_pem = jwt.PyJWK.from_dict(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64({**header, 'alg': 'HS256'})}.{b64(payload)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _attacker_signed(token: str, **header_extra: Any) -> str:
    header, payload, _ = parts(token)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    extra = {name: (public if value == "JWK" else value) for name, value in header_extra.items()}
    return jwt.encode(payload, key, algorithm="RS256", headers={**header, **extra})


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda s, t: f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{t.split('.')[1]}.",
            id="alg-none",
        ),
        pytest.param(lambda s, t: t.rsplit(".", 1)[0] + ".", id="stripped-signature"),
        pytest.param(
            lambda s, t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"), id="bad-signature"
        ),
        pytest.param(_hs256_with_public_key, id="hs256-with-public-key"),
        pytest.param(lambda s, t: _attacker_signed(t, jwk="JWK"), id="embedded-jwk"),
        pytest.param(lambda s, t: _attacker_signed(t, jku="https://evil.example/jwks"), id="jku"),
        pytest.param(lambda s, t: _attacker_signed(t, x5u="https://evil.example/x5u"), id="x5u"),
        pytest.param(lambda s, t: _attacker_signed(t, kid="../../dev/null"), id="path-kid"),
        pytest.param(lambda s, t: _attacker_signed(t, kid="' OR 1=1 --"), id="sql-kid"),
        pytest.param(lambda s, t: s.keystore.sign(parts(t)[1], typ="at+jwt") + "x", id="trailing"),
        pytest.param(lambda s, t: "a" * 9_000, id="huge"),
        pytest.param(
            lambda s, t: (
                f"{b64({'alg': 'RS256', 'typ': 'at+jwt', 'kid': 'x', 'pad': 'p' * 9_000})}.e30."
            ),
            id="huge-header",
        ),
        pytest.param(lambda s, t: "e30.e30.e30.e30.e30", id="jwe-shape"),
        pytest.param(lambda s, t: f"{b64(b'[' * 6000)}.e30.", id="deeply-nested-header"),
    ],
)
def test_forged_bearer_tokens_are_invalid_token(
    flow: Flow, issued: dict[str, Any], services: Services, forge: Callable[[Services, str], str]
) -> None:
    """docs/security.md F51: explicit key set and algorithm allowlist; no header we did not
    write; bounded input; never a 500."""
    assert_invalid_token(flow.userinfo(forge(services, issued["access_token"])))


@pytest.mark.parametrize("size", [40_000, 300_000])
def test_a_token_past_the_header_limit_is_431(flow: Flow, size: int) -> None:
    """Larger than the request-header limit: refused before anything reads the token."""
    token = f"{b64({'alg': 'RS256', 'typ': 'at+jwt', 'pad': 'p' * size})}.e30."
    assert flow.userinfo(token).status_code == 431


def test_unknown_crit_header_is_refused(services: Services, issued: dict[str, Any]) -> None:
    """docs/security.md F51 (CVE-2025-59420): we never write `crit`, so we never accept it."""
    header, payload, _ = parts(issued["access_token"])
    signing_input = f"{b64({**header, 'crit': ['x-rule'], 'x-rule': 1})}.{b64(payload)}"
    private = services.keystore.signing_key("RS256").private_key
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    forged = f"{signing_input}.{b64(signature)}"
    assert token_format.decode_own_jwt(services.keystore, forged, typ="at+jwt") is None


@pytest.mark.parametrize(("skew", "accepted"), [(10, True), (120, False)])
def test_iat_in_the_future(services: Services, skew: int, accepted: bool) -> None:
    """docs/security.md F52: ≤10 s ahead accepted (another instance's clock), >60 s refused."""
    now = db.utcnow()
    claims = {
        "iss": ISSUER, "sub": "u", "aud": services.settings.api_audience, "client_id": "c",
        "jti": "j", "iat": int((now + timedelta(seconds=skew)).timestamp()),
        "exp": int((now + timedelta(seconds=600)).timestamp()),
    }  # fmt: skip
    raw = services.keystore.sign(claims, typ="at+jwt")
    verified = token_format.verify_access_token(services.keystore, services.settings, raw, now)
    assert (verified is not None) is accepted


def test_wrong_issuer_or_audience_is_invalid(flow: Flow, services: Services) -> None:
    """docs/security.md F52: right key, wrong iss or aud → refused."""
    now = int(db.utcnow().timestamp())
    base = {"sub": "u", "client_id": "c", "jti": "j", "iat": now, "exp": now + 600,
            "scope": "openid"}  # fmt: skip
    for claims in (
        {**base, "iss": "https://evil.example", "aud": services.settings.api_audience},
        {**base, "iss": ISSUER, "aud": "https://other.example/api"},
    ):
        assert_invalid_token(flow.userinfo(services.keystore.sign(claims, typ="at+jwt")))


# -- client_credentials --------------------------------------------------------------------


@pytest.fixture
def service_rp(make: factories.Factory) -> RP:
    client, secret = make.client(
        name="Reporting job", redirect_uris=[], grant_types=["client_credentials"], scope="api"
    )
    return RP(client, secret)


def test_client_credentials_issue_an_access_token_only(
    flow: Flow, service_rp: RP, services: Services
) -> None:
    """docs/security.md D42: no refresh token, no ID token; the client is subject and audience."""
    response = flow.client.post(
        "/token", data={"grant_type": "client_credentials", "scope": "api"}, auth=service_rp.basic
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == claims["aud"] == claims["client_id"] == service_rp.id
    assert flow.introspect(service_rp, body["access_token"])["active"] is True
    assert_invalid_token(flow.userinfo(body["access_token"]))
    bare = flow.client.post(
        "/token", data={"grant_type": "client_credentials"}, auth=service_rp.basic
    )
    assert "scope" not in bare.json()


@pytest.mark.parametrize("scope", ["openid", "api offline_access", "other"])
def test_client_credentials_scope_must_be_the_clients_and_not_a_users(
    flow: Flow, service_rp: RP, scope: str
) -> None:
    """docs/security.md D42."""
    response = flow.client.post(
        "/token", data={"grant_type": "client_credentials", "scope": scope}, auth=service_rp.basic
    )
    assert_oauth_error(response, "invalid_scope")


def test_public_clients_cannot_use_client_credentials(flow: Flow, public_rp: RP) -> None:
    """docs/security.md D42 (OAuth 2.1 §4.2)."""
    response = flow.client.post(
        "/token", data={"grant_type": "client_credentials", "client_id": public_rp.id}
    )
    assert_oauth_error(response, "invalid_client", 401)


# -- discovery -----------------------------------------------------------------------------


@pytest.fixture
def https_client(settings: Settings) -> Any:
    issuer = "https://id.example.com"
    app = create_app(settings.replace(issuer=issuer))
    with TestClient(app, base_url=issuer) as test_client:
        yield test_client
    app.state.db.dispose()


def test_discovery_documents_validate_and_list_every_endpoint(https_client: TestClient) -> None:
    """docs/security.md F49 (oidcc-discovery-endpoint-verification), validated with Authlib's
    RFC 8414 and OpenID Provider metadata classes (they demand https, hence the issuer)."""
    issuer = "https://id.example.com"
    oidc = https_client.get("/.well-known/openid-configuration").json()
    oauth = https_client.get("/.well-known/oauth-authorization-server").json()
    assert oidc == oauth
    AuthorizationServerMetadata(oauth).validate()
    OpenIDProviderMetadata(oidc).validate()
    assert oidc["issuer"] == issuer
    for name in (
        "authorization_endpoint", "token_endpoint", "userinfo_endpoint", "revocation_endpoint",
        "introspection_endpoint", "end_session_endpoint", "jwks_uri",
    ):  # fmt: skip
        assert oidc[name].startswith(issuer + "/"), name
    assert oidc["response_types_supported"] == ["code"]
    assert oidc["code_challenge_methods_supported"] == ["S256"]
    assert "openid" in oidc["scopes_supported"]
    assert "none" not in oidc["id_token_signing_alg_values_supported"]
    assert "password" not in oidc["grant_types_supported"]
    assert oidc["authorization_response_iss_parameter_supported"] is True


def test_tokens_carry_the_discovered_issuer(
    client: TestClient, flow: Flow, issued: dict[str, Any]
) -> None:
    """docs/security.md F49: `iss` byte-equal to the document's issuer."""
    issuer = client.get("/.well-known/openid-configuration").json()["issuer"]
    for token in (issued["access_token"], issued["id_token"]):
        assert jwt.decode(token, options={"verify_signature": False})["iss"] == issuer
