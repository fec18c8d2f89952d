"""private_key_jwt client authentication (RFC 7523, OIDC Core §9): docs/security.md F53."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.testclient import TestClient

from authserver import fetch
from authserver.oauth import assertions
from authserver.services import Services
from tests import factories
from tests.conftest import ISSUER, TEST_REDIS_URL
from tests.oauth.test_token import assert_oauth_error

TOKEN_URL = f"{ISSUER}/token"
JWKS_URI = "https://keys.client.example/jwks.json"


class Key:
    """A client's signing key and the JWK of its public half."""

    def __init__(self, private: Any, alg: str, kid: str) -> None:
        self.private, self.alg, self.kid = private, alg, kid

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    return Key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256", "r1")


@pytest.fixture(scope="module")
def other_key() -> Key:
    return Key(ec.generate_private_key(ec.SECP256R1()), "ES256", "r1")


def base64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign(key: Key, client_id: str, **changes: Any) -> str:
    """A client assertion; `changes` replace claims (None removes one) or, as `header`,
    the JOSE header."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    header = changes.pop("header", {"kid": key.kid})
    alg = changes.pop("alg", key.alg)
    signing_key = changes.pop("signing_key", key.private)
    claims.update(changes)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, signing_key, algorithm=alg, headers=header)


def token_request(client: TestClient, assertion: str, **extra: str) -> httpx.Response:
    return client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": assertions.ASSERTION_TYPE,
            "client_assertion": assertion,
            **extra,
        },
    )


@pytest.fixture
def register(make: factories.Factory) -> Callable[..., str]:
    def register(**keys: Any) -> str:
        client, secret = make.client(
            name="Billing",
            redirect_uris=[],
            grant_types=["client_credentials"],
            scope="",
            auth_method="private_key_jwt",
            **keys,
        )
        assert secret is None
        return client.id

    return register


@pytest.fixture
def client_id(register: Callable[..., str], rsa_key: Key) -> str:
    return register(jwks=rsa_key.jwks())


def test_aud_the_issuer_authenticates(client: TestClient, client_id: str, rsa_key: Key) -> None:
    response = token_request(client, sign(rsa_key, client_id, aud=ISSUER))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


def test_aud_the_token_endpoint_authenticates(
    client: TestClient, client_id: str, rsa_key: Key
) -> None:
    response = token_request(client, sign(rsa_key, client_id, aud=[TOKEN_URL]))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"aud": "https://other.example/token"}, id="wrong aud"),
        pytest.param({"aud": [ISSUER, "https://other.example"]}, id="aud with another server"),
        pytest.param({"aud": None}, id="no aud"),
        pytest.param({"sub": None}, id="missing sub"),
        pytest.param({"iss": "someone-else"}, id="iss is not the client"),
        pytest.param({"exp": -300, "iat": -360}, id="expired"),
        pytest.param({"exp": None}, id="no exp"),
        pytest.param({"exp": 600}, id="lives 10 minutes"),
        pytest.param({"iat": 120}, id="iat in the future"),
        pytest.param({"nbf": 120}, id="nbf in the future"),
        pytest.param({"jti": None}, id="no jti"),
        pytest.param({"exp": "soon"}, id="exp not a number"),
        pytest.param({"header": {"kid": "unknown"}}, id="unknown kid, no jwks_uri"),
    ],
)
def test_refused_claims_are_401_invalid_client(
    client: TestClient, client_id: str, rsa_key: Key, changes: dict[str, Any]
) -> None:
    """Times in `changes` are seconds from now."""
    now = int(time.time())
    for name in ("exp", "iat", "nbf"):
        if isinstance(changes.get(name), int):
            changes = {**changes, name: now + changes[name]}
    response = token_request(client, sign(rsa_key, client_id, **changes))
    assert_oauth_error(response, "invalid_client", 401)
    assert response.headers["www-authenticate"].startswith("Basic")


def test_a_key_of_another_client_is_refused(
    client: TestClient, register: Callable[..., str], rsa_key: Key, other_key: Key
) -> None:
    ours = register(jwks=rsa_key.jwks())
    register(jwks=other_key.jwks())
    assertion = sign(other_key, ours)
    assert_oauth_error(token_request(client, assertion), "invalid_client", 401)


def test_a_reused_jti_is_refused(client: TestClient, client_id: str, rsa_key: Key) -> None:
    assertion = sign(rsa_key, client_id)
    assert token_request(client, assertion).status_code == 200
    assert_oauth_error(token_request(client, assertion), "invalid_client", 401)
    again = sign(
        rsa_key, client_id, jti=jwt.decode(assertion, options={"verify_signature": False})["jti"]
    )
    assert_oauth_error(token_request(client, again), "invalid_client", 401)


def test_replays_are_caught_across_instances_through_redis(
    app_with: Callable[..., TestClient], client_id: str, rsa_key: Key
) -> None:
    if not TEST_REDIS_URL:
        pytest.skip("AUTHSERVER_TEST_REDIS_URL is not set")
    first, second = app_with(), app_with()
    assertion = sign(rsa_key, client_id)
    assert token_request(first, assertion).status_code == 200
    assert_oauth_error(token_request(second, assertion), "invalid_client", 401)


def test_alg_none_is_refused(client: TestClient, client_id: str, rsa_key: Key) -> None:
    unsigned = sign(rsa_key, client_id, alg="none", signing_key=None)
    assert_oauth_error(token_request(client, unsigned), "invalid_client", 401)


def test_hs256_signed_with_the_public_key_is_refused(
    client: TestClient, client_id: str, rsa_key: Key
) -> None:
    """The classic confusion: the public key, known to anyone, used as an HMAC secret."""
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(sign(rsa_key, client_id), options={"verify_signature": False})
    header = {"alg": "HS256", "typ": "JWT", "kid": rsa_key.kid}
    signing_input = b".".join(base64url(json.dumps(part).encode()) for part in (header, claims))
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + base64url(mac)).decode()
    assert_oauth_error(token_request(client, forged), "invalid_client", 401)


def test_keys_named_by_the_assertion_itself_are_ignored(
    client: TestClient, client_id: str, rsa_key: Key, other_key: Key
) -> None:
    """`jwk` / `jku` headers: an attacker would name their own key."""
    with respx.mock:
        route = respx.get("https://evil.example/jwks").mock(
            return_value=httpx.Response(200, json=other_key.jwks())
        )
        for header in ({"jwk": other_key.jwk()}, {"jku": "https://evil.example/jwks"}):
            forged = sign(other_key, client_id, header={**header, "kid": rsa_key.kid})
            assert_oauth_error(token_request(client, forged), "invalid_client", 401)
        assert route.call_count == 0


def test_an_oversized_assertion_is_refused(
    client: TestClient, client_id: str, rsa_key: Key
) -> None:
    bloated = sign(rsa_key, client_id, padding="x" * assertions.MAX_ASSERTION)
    assert_oauth_error(token_request(client, bloated), "invalid_client", 401)


def test_an_assertion_with_a_secret_is_two_methods(
    client: TestClient, client_id: str, rsa_key: Key
) -> None:
    response = token_request(client, sign(rsa_key, client_id), client_secret="x")
    assert_oauth_error(response, "invalid_request", 400)


def test_a_wrong_assertion_type_is_refused(
    client: TestClient, client_id: str, rsa_key: Key
) -> None:
    response = token_request(
        client, sign(rsa_key, client_id), client_assertion_type="urn:x:saml2-bearer"
    )
    assert_oauth_error(response, "invalid_client", 401)


def test_a_secret_client_cannot_switch_to_assertions(
    client: TestClient, make: factories.Factory, rsa_key: Key
) -> None:
    secret_client, _ = make.client(redirect_uris=[], grant_types=["client_credentials"], scope="")
    response = token_request(client, sign(rsa_key, secret_client.id))
    assert_oauth_error(response, "invalid_client", 401)


@pytest.mark.parametrize("alg", ["PS256", "ES256", "EdDSA"])
def test_other_asymmetric_algorithms_authenticate(
    client: TestClient, register: Callable[..., str], alg: str
) -> None:
    private = {
        "PS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate,
    }[alg]()
    key = Key(private, alg, "k")
    jwk = key.jwk()
    if alg == "PS256":
        jwk["alg"] = "PS256"
    new_client = register(jwks={"keys": [jwk]})
    response = token_request(client, sign(key, new_client))
    assert response.status_code == 200, response.text


def test_revocation_and_introspection_accept_their_own_url_as_aud(
    client: TestClient, client_id: str, rsa_key: Key
) -> None:
    issued = token_request(client, sign(rsa_key, client_id)).json()["access_token"]
    for path in ("/introspect", "/revoke"):
        response = client.post(
            path,
            data={
                "token": issued,
                "client_assertion_type": assertions.ASSERTION_TYPE,
                "client_assertion": sign(rsa_key, client_id, aud=f"{ISSUER}{path}"),
            },
        )
        assert response.status_code == 200, (path, response.text)
    introspected = client.post(
        "/introspect",
        data={
            "token": issued,
            "client_assertion_type": assertions.ASSERTION_TYPE,
            "client_assertion": sign(rsa_key, client_id, aud=ISSUER),
        },
    )
    assert introspected.json() == {"active": False}


# -- jwks_uri through the outbound client ---------------------------------------------------


@respx.mock
def test_keys_are_fetched_from_jwks_uri_and_cached(
    client: TestClient, register: Callable[..., str], rsa_key: Key
) -> None:
    route = respx.get(JWKS_URI).mock(return_value=httpx.Response(200, json=rsa_key.jwks()))
    client_id = register(jwks_uri=JWKS_URI)
    for _ in range(2):
        assert token_request(client, sign(rsa_key, client_id)).status_code == 200
    assert route.call_count == 1


@respx.mock
def test_an_unknown_kid_refreshes_the_keys_once(
    client: TestClient, register: Callable[..., str], rsa_key: Key, services: Services
) -> None:
    """A rotated key: the cached set lacks the new kid, so the set is fetched again; a
    second unknown kid within the refresh floor does not fetch a third time."""
    old = Key(ec.generate_private_key(ec.SECP256R1()), "ES256", "old")
    route = respx.get(JWKS_URI).mock(return_value=httpx.Response(200, json=old.jwks()))
    client_id = register(jwks_uri=JWKS_URI)
    assert token_request(client, sign(old, client_id)).status_code == 200
    route.mock(return_value=httpx.Response(200, json={"keys": [old.jwk(), rsa_key.jwk()]}))
    services.fetcher._clock = lambda: time.monotonic() + 120  # type: ignore[attr-defined]
    assert token_request(client, sign(rsa_key, client_id)).status_code == 200
    assert route.call_count == 2
    stranger = Key(ec.generate_private_key(ec.SECP256R1()), "ES256", "stranger")
    assert_oauth_error(token_request(client, sign(stranger, client_id)), "invalid_client", 401)
    assert route.call_count == 2


def test_a_jwks_uri_on_a_private_address_is_never_fetched(
    client: TestClient,
    register: Callable[..., str],
    rsa_key: Key,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/security.md F53: SSRF through `jwks_uri`, by address or by a name that
    resolves to one."""
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["10.0.0.7"]

    monkeypatch.setattr(fetch, "system_resolver", resolve)
    for uri in (
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/jwks",
        "https://2130706433/k",
        "https://keys.internal.example/jwks",
    ):
        client_id = register(jwks_uri=uri)
        assert_oauth_error(token_request(client, sign(rsa_key, client_id)), "invalid_client", 401)
    assert resolved == ["keys.internal.example"]


# -- registration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"jwks_uri": JWKS_URI, "jwks": {"keys": []}}, "not both"),
        ({"jwks_uri": "http://keys.client.example/jwks"}, "https"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "public keys only"),
        ({"jwks": {"keys": []}}, "1 to"),
        ({"jwks": {"keys": [{"kty": "RSA", "n": "x"}]}}, "cannot be read"),
    ],
)
def test_registration_checks_the_keys(
    make: factories.Factory, keys: dict[str, Any], message: str
) -> None:
    from authserver.errors import Invalid

    with pytest.raises(Invalid, match=message):
        make.client(
            redirect_uris=[],
            grant_types=["client_credentials"],
            auth_method="private_key_jwt",
            **keys,
        )


def test_private_members_are_refused(make: factories.Factory, rsa_key: Key) -> None:
    from authserver.errors import Invalid

    private_jwk = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(rsa_key.private))
    with pytest.raises(Invalid, match="public keys only"):
        make.client(
            redirect_uris=[],
            grant_types=["client_credentials"],
            auth_method="private_key_jwt",
            jwks={"keys": [private_jwk]},
        )


def test_discovery_advertises_asymmetric_algorithms_only(client: TestClient) -> None:
    document = client.get("/.well-known/openid-configuration").json()
    assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
    assert "private_key_jwt" in document["introspection_endpoint_auth_methods_supported"]
    algs = document["token_endpoint_auth_signing_alg_values_supported"]
    assert set(algs) == {"RS256", "PS256", "ES256", "EdDSA"}
