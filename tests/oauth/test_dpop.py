"""DPoP (RFC 9449) by hand: proofs at /token, bound tokens at /userinfo and the API, the
binding of codes and refresh tokens, and server nonces (docs/security.md O)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from authserver import dpop
from authserver.services import Services
from authserver.users.models import User
from tests.conftest import ISSUER
from tests.factories import DPoPKey
from tests.oauth.conftest import RP, Flow, authorization_params, location_params

pytestmark = pytest.mark.usefixtures("signed_in")


@pytest.fixture
def key() -> DPoPKey:
    return DPoPKey()


@pytest.fixture
def token_url(services: Services) -> str:
    return f"{services.settings.issuer}/token"


@pytest.fixture
def userinfo_url(services: Services) -> str:
    return f"{services.settings.issuer}/userinfo"


def claims_of(access_token: str) -> dict[str, Any]:
    return dict(jwt.decode(access_token, options={"verify_signature": False}))


def client_credentials(
    client: TestClient, rp: RP, proof: str | None, **extra: str
) -> httpx.Response:
    headers = {"DPoP": proof} if proof is not None else {}
    data = {"grant_type": "client_credentials", "scope": "", **extra}
    return client.post("/token", data=data, auth=rp.basic, headers=headers)


def bound_tokens(flow: Flow, rp: RP, user: User, key: DPoPKey, token_url: str) -> dict[str, Any]:
    """Code flow with a proof at the token request: the token response."""
    flow.allow(user, rp)
    response = flow.exchange(rp, flow.code(rp), headers=proof_of(key, token_url))
    assert response.status_code == 200, response.text
    return dict(response.json())


def proof_of(key: DPoPKey | None, url: str) -> dict[str, str]:
    """The `DPoP` header of a token request (none without a key)."""
    return {"DPoP": key.proof("POST", url)} if key is not None else {}


def assert_refused(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


# -- /token ----------------------------------------------------------------------------------


def test_a_proof_at_token_binds_the_access_token_to_the_key(
    flow: Flow, rp: RP, user: User, key: DPoPKey, token_url: str
) -> None:
    issued = bound_tokens(flow, rp, user, key, token_url)
    assert issued["token_type"] == "DPoP"
    assert claims_of(issued["access_token"])["cnf"] == {"jkt": key.jkt}
    introspected = flow.introspect(rp, issued["access_token"])
    assert introspected["active"] is True
    assert introspected["token_type"] == "DPoP"
    assert introspected["cnf"] == {"jkt": key.jkt}


def test_without_a_proof_the_token_stays_a_bearer_token(
    client: TestClient, rp: RP, flow: Flow
) -> None:
    response = client_credentials(client, rp, None)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
    assert "cnf" not in claims_of(response.json()["access_token"])
    assert "cnf" not in flow.introspect(rp, response.json()["access_token"])


def test_a_replayed_proof_is_refused(
    client: TestClient, rp: RP, key: DPoPKey, token_url: str
) -> None:
    """docs/security.md O109."""
    proof = key.proof("POST", token_url)
    assert client_credentials(client, rp, proof).status_code == 200
    assert_refused(client_credentials(client, rp, proof), "invalid_dpop_proof")


@pytest.mark.parametrize(
    "claims",
    [
        {"htm": "GET"},
        {"htu": "https://elsewhere.example/token"},
        {"htu": f"{ISSUER}/userinfo"},
        {"htu": "http://[::1/token"},
    ],
    ids=["wrong-htm", "wrong-host", "wrong-path", "unparsable"],
)
def test_a_proof_for_another_request_is_refused(
    client: TestClient, rp: RP, key: DPoPKey, token_url: str, claims: dict[str, Any]
) -> None:
    """docs/security.md O110."""
    assert_refused(
        client_credentials(client, rp, key.proof("POST", token_url, claims=claims)),
        "invalid_dpop_proof",
    )


def test_htu_is_compared_without_query_or_fragment(
    client: TestClient, rp: RP, key: DPoPKey, token_url: str
) -> None:
    proof = key.proof("POST", token_url, claims={"htu": f"{token_url}?x=1#frag"})
    assert client_credentials(client, rp, proof).status_code == 200


@pytest.mark.parametrize("offset", [-dpop.MAX_AGE - 5, dpop.FUTURE + 30])
def test_a_stale_or_future_iat_is_refused(
    client: TestClient, rp: RP, key: DPoPKey, token_url: str, offset: int
) -> None:
    """docs/security.md O111."""
    proof = key.proof("POST", token_url, claims={"iat": int(time.time()) + offset})
    assert_refused(client_credentials(client, rp, proof), "invalid_dpop_proof")


def test_proofs_that_prove_nothing_are_refused(
    client: TestClient, rp: RP, key: DPoPKey, token_url: str
) -> None:
    """docs/security.md O112: wrong typ, a MAC, a private jwk, another key's signature, no
    jti, two DPoP headers."""
    private_jwk = {**key.jwk, "d": "AAAA"}
    other = DPoPKey()
    bad = [
        key.proof("POST", token_url, header={"typ": "JWT"}),
        jwt.encode(
            {"jti": "j", "htm": "POST", "htu": token_url, "iat": 1},
            "a-shared-secret-of-enough-length-for-hs256",
            algorithm="HS256",
            headers={"typ": "dpop+jwt", "jwk": key.jwk},
        ),
        key.proof("POST", token_url, header={"jwk": private_jwk}),
        key.proof("POST", token_url, header={"jwk": other.jwk}),
        key.proof("POST", token_url, claims={"jti": None}),
        "not-a-jwt",
    ]
    for proof in bad:
        assert_refused(client_credentials(client, rp, proof), "invalid_dpop_proof")
    two = client.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": ""},
        auth=rp.basic,
        headers=[("DPoP", key.proof("POST", token_url)), ("DPoP", key.proof("POST", token_url))],
    )
    assert_refused(two, "invalid_dpop_proof")


def test_a_public_clients_refresh_token_is_bound_to_the_key(
    flow: Flow, public_rp: RP, user: User, key: DPoPKey, token_url: str
) -> None:
    """docs/security.md O113: a stolen refresh token is useless without the key."""
    issued = bound_tokens(flow, public_rp, user, key, token_url)
    raw = issued["refresh_token"]
    assert_refused(flow.refresh(public_rp, raw), "invalid_grant")
    other = flow.refresh(public_rp, raw, headers=proof_of(DPoPKey(), token_url))
    assert_refused(other, "invalid_grant")
    good = flow.refresh(public_rp, raw, headers=proof_of(key, token_url))
    assert good.status_code == 200, good.text
    assert good.json()["token_type"] == "DPoP"
    assert claims_of(good.json()["access_token"])["cnf"] == {"jkt": key.jkt}


def test_a_confidential_clients_refresh_token_is_not_bound(
    flow: Flow, rp: RP, user: User, key: DPoPKey, token_url: str
) -> None:
    """RFC 9449 §5: the client authenticates, so its refresh token is not bound; the access
    tokens it gets are bound to whichever key proves the request."""
    issued = bound_tokens(flow, rp, user, key, token_url)
    plain = flow.refresh(rp, issued["refresh_token"])
    assert plain.status_code == 200, plain.text
    assert plain.json()["token_type"] == "Bearer"


# -- dpop_jkt at /authorize -----------------------------------------------------------------


@pytest.mark.parametrize("sent", ["none", "other"])
def test_a_code_bound_with_dpop_jkt_needs_a_proof_with_that_key(
    flow: Flow, public_rp: RP, user: User, key: DPoPKey, token_url: str, sent: str
) -> None:
    """docs/security.md O114: a code stolen on its way back is useless without the key."""
    flow.allow(user, public_rp)
    code = flow.code(public_rp, dpop_jkt=key.jkt)
    proof = proof_of(DPoPKey() if sent == "other" else None, token_url)
    assert_refused(flow.exchange(public_rp, code, headers=proof), "invalid_grant")


def test_a_code_bound_with_dpop_jkt_is_redeemed_with_that_key(
    flow: Flow, public_rp: RP, user: User, key: DPoPKey, token_url: str
) -> None:
    flow.allow(user, public_rp)
    code = flow.code(public_rp, dpop_jkt=key.jkt)
    response = flow.exchange(public_rp, code, headers=proof_of(key, token_url))
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["cnf"] == {"jkt": key.jkt}


def test_a_malformed_dpop_jkt_is_invalid_request(flow: Flow, public_rp: RP, user: User) -> None:
    flow.allow(user, public_rp)
    params = authorization_params(public_rp, dpop_jkt="not a thumbprint")
    response = flow.client.get("/authorize", params=params)
    assert response.status_code == 303
    assert location_params(response)["error"] == "invalid_request"


# -- nonces and the setting -----------------------------------------------------------------


def test_with_nonces_on_a_proof_without_the_servers_nonce_gets_use_dpop_nonce(
    app_with: Callable[..., TestClient], rp: RP, key: DPoPKey, token_url: str
) -> None:
    """docs/security.md O115: the nonce is stateless, so a second app (another worker)
    accepts the nonce the first one handed out."""
    first, second = app_with(dpop_nonce=True), app_with(dpop_nonce=True)
    refused = client_credentials(first, rp, key.proof("POST", token_url))
    assert_refused(refused, "use_dpop_nonce")
    nonce = refused.headers["DPoP-Nonce"]
    wrong = client_credentials(first, rp, key.proof("POST", token_url, claims={"nonce": "x"}))
    assert_refused(wrong, "use_dpop_nonce")
    good = client_credentials(second, rp, key.proof("POST", token_url, claims={"nonce": nonce}))
    assert good.status_code == 200, good.text
    assert good.json()["token_type"] == "DPoP"
    assert good.headers["DPoP-Nonce"]


def test_discovery_advertises_dpop_only_while_it_is_on(
    client: TestClient, app_with: Callable[..., TestClient], rp: RP, key: DPoPKey, token_url: str
) -> None:
    on = client.get("/.well-known/openid-configuration").json()
    assert on["dpop_signing_alg_values_supported"] == list(dpop.ALGORITHMS)
    off_client = app_with(dpop=False)
    off = off_client.get("/.well-known/openid-configuration").json()
    assert "dpop_signing_alg_values_supported" not in off
    api = "/.well-known/oauth-protected-resource/api/v1"
    assert "dpop_signing_alg_values_supported" in client.get(api).json()
    assert "dpop_signing_alg_values_supported" not in off_client.get(api).json()
    ignored = client_credentials(off_client, rp, key.proof("POST", token_url))
    assert ignored.status_code == 200, ignored.text
    assert ignored.json()["token_type"] == "Bearer"


def test_nonces_are_accepted_for_two_windows_only() -> None:
    clock = [1_000_000.0]
    nonces = dpop.Nonces(b"k" * 32, clock=lambda: clock[0])
    nonce = nonces.current()
    clock[0] += dpop.NONCE_WINDOW
    assert nonces.accepts(nonce)
    clock[0] += dpop.NONCE_WINDOW
    assert not nonces.accepts(nonce)
    assert not dpop.Nonces(b"j" * 32, clock=lambda: clock[0]).accepts(nonces.current())


def test_the_thumbprint_is_rfc_7638s() -> None:
    """RFC 7638 §3.1's example key and thumbprint."""
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
        "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
        "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert dpop.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# -- protected resources: /userinfo and the API ---------------------------------------------


@pytest.fixture
def bound(flow: Flow, rp: RP, user: User, key: DPoPKey, token_url: str) -> str:
    """An access token bound to `key`, from the code flow."""
    return str(bound_tokens(flow, rp, user, key, token_url)["access_token"])


def assert_dpop_refusal(response: httpx.Response, error: str) -> None:
    """RFC 9449 §7.1: 401 with a `DPoP` challenge naming the error and the algorithms."""
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP "), challenge
    assert f'error="{error}"' in challenge
    assert f'algs="{" ".join(dpop.ALGORITHMS)}"' in challenge


def test_userinfo_accepts_a_bound_token_with_a_proof_of_its_key(
    client: TestClient, bound: str, key: DPoPKey, userinfo_url: str, user: User
) -> None:
    response = client.get("/userinfo", headers=key.headers("GET", userinfo_url, bound))
    assert response.status_code == 200, response.text
    assert response.json()["sub"] == user.id


def test_a_bound_token_presented_as_bearer_is_refused(client: TestClient, bound: str) -> None:
    """docs/security.md O116: a stolen bound token is useless as a bearer token."""
    response = client.get("/userinfo", headers={"Authorization": f"Bearer {bound}"})
    assert_dpop_refusal(response, "invalid_token")
    assert response.json()["error"] == "invalid_token"


def test_a_proof_without_ath_or_for_another_token_is_refused_at_the_resource(
    client: TestClient, bound: str, key: DPoPKey, userinfo_url: str
) -> None:
    """docs/security.md O112: `ath` ties the proof to this token."""
    missing = key.headers("GET", userinfo_url, bound, claims={"ath": None})
    assert_dpop_refusal(client.get("/userinfo", headers=missing), "invalid_dpop_proof")
    other = key.headers("GET", userinfo_url, bound, claims={"ath": dpop.token_hash("other")})
    assert_dpop_refusal(client.get("/userinfo", headers=other), "invalid_dpop_proof")


def test_at_the_resource_a_replayed_or_misdirected_proof_is_refused(
    client: TestClient, bound: str, key: DPoPKey, userinfo_url: str
) -> None:
    """docs/security.md O109, O110, O111 at a resource."""
    headers = key.headers("GET", userinfo_url, bound)
    assert client.get("/userinfo", headers=headers).status_code == 200
    assert_dpop_refusal(client.get("/userinfo", headers=headers), "invalid_dpop_proof")
    for changes in (
        {"claims": {"htm": "POST"}},
        {"claims": {"htu": f"{ISSUER}/api/v1/users/me"}},
        {"claims": {"iat": int(time.time()) - dpop.MAX_AGE - 5}},
    ):
        refused = client.get(
            "/userinfo", headers=key.headers("GET", userinfo_url, bound, **changes)
        )
        assert_dpop_refusal(refused, "invalid_dpop_proof")


def test_a_proof_by_another_key_or_no_proof_is_refused(
    client: TestClient, bound: str, userinfo_url: str
) -> None:
    thief = DPoPKey()
    assert_dpop_refusal(
        client.get("/userinfo", headers=thief.headers("GET", userinfo_url, bound)),
        "invalid_dpop_proof",
    )
    no_proof = client.get("/userinfo", headers={"Authorization": f"DPoP {bound}"})
    assert_dpop_refusal(no_proof, "invalid_dpop_proof")


def test_an_unbound_token_under_the_dpop_scheme_is_refused(
    client: TestClient, rp: RP, key: DPoPKey, userinfo_url: str, flow: Flow, user: User
) -> None:
    plain = flow.tokens(rp, user)["access_token"]
    response = client.get("/userinfo", headers=key.headers("GET", userinfo_url, plain))
    assert_dpop_refusal(response, "invalid_token")


def test_the_api_accepts_dpop_and_refuses_a_bound_token_as_bearer(
    client: TestClient, tokens: Any, user: User, key: DPoPKey, services: Services
) -> None:
    url = f"{services.settings.issuer}/api/v1/users/me"
    issued = tokens.access_token(user, "users:read", jkt=key.jkt)
    ok = client.get("/api/v1/users/me", headers=key.headers("GET", url, issued.token))
    assert ok.status_code == 200, ok.text
    as_bearer = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {issued.token}"})
    assert_dpop_refusal(as_bearer, "invalid_token")
    assert as_bearer.headers["content-type"].startswith("application/problem+json")
    no_ath = key.headers("GET", url, issued.token, claims={"ath": None})
    assert_dpop_refusal(client.get("/api/v1/users/me", headers=no_ath), "invalid_dpop_proof")


def test_with_nonces_on_the_resource_answers_use_dpop_nonce(
    app_with: Callable[..., TestClient], tokens: Any, user: User, key: DPoPKey, userinfo_url: str
) -> None:
    """docs/security.md O115 at a resource: 401, a `DPoP` challenge and the nonce."""
    client = app_with(dpop_nonce=True)
    issued = tokens.access_token(user, "openid", jkt=key.jkt)
    refused = client.get("/userinfo", headers=key.headers("GET", userinfo_url, issued.token))
    assert_dpop_refusal(refused, "use_dpop_nonce")
    nonce = refused.headers["DPoP-Nonce"]
    retried = key.headers("GET", userinfo_url, issued.token, claims={"nonce": nonce})
    assert client.get("/userinfo", headers=retried).status_code == 200


def test_a_proof_at_par_binds_the_code_to_its_key(
    flow: Flow, public_rp: RP, user: User, key: DPoPKey, services: Services, token_url: str
) -> None:
    """RFC 9449 §10.1 (docs/security.md O114): the pushed request's proof acts as dpop_jkt."""
    flow.allow(user, public_rp)
    par_url = f"{services.settings.issuer}/par"
    params = authorization_params(public_rp)
    mismatch = flow.client.post(
        "/par",
        data={**params, "dpop_jkt": DPoPKey().jkt},
        headers={"DPoP": key.proof("POST", par_url)},
    )
    assert_refused(mismatch, "invalid_dpop_proof")
    pushed = flow.client.post("/par", data=params, headers={"DPoP": key.proof("POST", par_url)})
    assert pushed.status_code == 201, pushed.text
    answer = flow.client.get(
        "/authorize",
        params={"client_id": public_rp.id, "request_uri": pushed.json()["request_uri"]},
    )
    code = location_params(answer)["code"]
    stolen = flow.exchange(public_rp, code, headers=proof_of(DPoPKey(), token_url))
    assert_refused(stolen, "invalid_grant")
    flow.allow(user, public_rp)
    pushed = flow.client.post("/par", data=params, headers={"DPoP": key.proof("POST", par_url)})
    answer = flow.client.get(
        "/authorize",
        params={"client_id": public_rp.id, "request_uri": pushed.json()["request_uri"]},
    )
    code = location_params(answer)["code"]
    redeemed = flow.exchange(public_rp, code, headers=proof_of(key, token_url))
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["token_type"] == "DPoP"
