"""The resource-server helper in a third party's Starlette app, against this server: the JWKS
comes from the authorization server app itself (over an in-process transport), tokens from
the test factories, and every refusal is checked for its RFC 6750 answer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from authserver import resource_server
from authserver.db import utcnow
from authserver.oauth import token_format
from authserver.oauth import tokens as oauth_tokens
from authserver.resource_server import ResourceServer
from authserver.services import Services
from tests import factories
from tests.conftest import ISSUER

PHOTOS = "https://photos.example.com"
METADATA = f"{PHOTOS}/.well-known/oauth-protected-resource"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Counting(httpx.AsyncBaseTransport):
    """The authorization server app as the helper's network, counting JWKS fetches."""

    def __init__(self, app: Starlette) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.jwks_fetches = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks.json":
            self.jwks_fetches += 1
        return await self.inner.handle_async_request(request)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def network(app: Starlette) -> Counting:
    return Counting(app)


def build(network: Counting, clock: Clock, **options: Any) -> tuple[ResourceServer, TestClient]:
    helper = ResourceServer(
        issuer=ISSUER,
        resource=PHOTOS,
        resource_name="Photos",
        scopes_supported=["photos:read"],
        http=httpx.AsyncClient(transport=network, base_url=ISSUER),
        clock=clock,
        **options,
    )

    @helper.protect("photos:read")
    async def photos(request: Request) -> JSONResponse:
        return JSONResponse({"owner": request.state.access_token["sub"]})

    app = Starlette(routes=[Route("/photos", photos), *helper.routes()])
    return helper, TestClient(app, base_url=PHOTOS)


@pytest.fixture
def photos_api(network: Counting, clock: Clock) -> Iterator[TestClient]:
    _, client = build(network, clock)
    with client:
        yield client


@pytest.fixture
def person(make: factories.Factory) -> Any:
    return make.user(email="pat@example.com")


def call(client: TestClient, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get("/photos", headers=headers)


def assert_refused(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{METADATA}", error="{error}"')


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(person: Any, client_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "sub": person.id,
        "aud": PHOTOS,
        "exp": now + 300,
        "iat": now,
        "jti": "j" + str(now),
        "client_id": client_id,
        "scope": "photos:read",
        **changes,
    }


def test_a_valid_token_for_this_resource_is_accepted(
    photos_api: TestClient, tokens: factories.TokenFactory, person: Any
) -> None:
    issued = tokens.access_token(person, "photos:read", audience=PHOTOS)
    response = call(photos_api, issued.token)
    assert response.status_code == 200, response.text
    assert response.json() == {"owner": person.id}


def test_no_token_is_a_bare_challenge_and_the_metadata_is_served(photos_api: TestClient) -> None:
    response = call(photos_api, None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA}"'
    document = photos_api.get("/.well-known/oauth-protected-resource")
    assert document.json() == {
        "resource": PHOTOS,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["photos:read"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Photos",
        "dpop_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA"],
    }
    assert document.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    "variant", ["other_audience", "id_token", "expired", "not_yet_valid", "other_issuer"]
)
def test_tokens_not_for_this_resource_or_not_now_are_invalid_token(
    photos_api: TestClient, tokens: factories.TokenFactory, person: Any, variant: str
) -> None:
    kwargs: dict[str, Any] = {
        "other_audience": {"audience": "https://other.example.com"},
        "id_token": {"typ": "JWT", "audience": PHOTOS},
        "expired": {"ttl": -60, "audience": PHOTOS},
    }.get(variant, {"audience": PHOTOS})
    issued = tokens.access_token(person, "photos:read", **kwargs)
    token = issued.token
    if variant in {"not_yet_valid", "other_issuer"}:
        services = tokens.factory.services
        changes = (
            {"nbf": int(time.time()) + 120}
            if variant == "not_yet_valid"
            else {"iss": "https://elsewhere.example.com"}
        )
        token = services.keystore.sign(
            claims_for(person, issued.client_id, **changes), typ="at+jwt"
        )
    assert_refused(call(photos_api, token), 401, "invalid_token")


def test_leeway_accepts_a_token_that_expired_a_moment_ago(
    photos_api: TestClient, tokens: factories.TokenFactory, person: Any
) -> None:
    issued = tokens.access_token(person, "photos:read", audience=PHOTOS, ttl=-10)
    assert call(photos_api, issued.token).status_code == 200


def test_a_token_signed_by_an_unknown_key_is_invalid_token(
    photos_api: TestClient, tokens: factories.TokenFactory, person: Any
) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    issued = tokens.access_token(person, "photos:read", audience=PHOTOS)
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "stranger"}
    forged = jwt.encode(header, claims_for(person, issued.client_id), stranger)
    assert_refused(call(photos_api, forged), 401, "invalid_token")


def test_alg_none_and_hs256_with_the_public_key_are_invalid_token(
    photos_api: TestClient, tokens: factories.TokenFactory, person: Any, services: Services
) -> None:
    """RFC 8725 §2.1, §3.1: the algorithm comes from our allowlist, never from the token."""
    issued = tokens.access_token(person, "photos:read", audience=PHOTOS)
    payload = b64(json.dumps(claims_for(person, issued.client_id)).encode())
    key = services.keystore.signing_key("RS256")
    none = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": key.kid}).encode())
    assert_refused(call(photos_api, f"{none}.{payload}."), 401, "invalid_token")

    public_pem = key.get_op_key("verify").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}).encode())
    signing_input = f"{hs_header}.{payload}".encode()
    mac = b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())
    assert_refused(call(photos_api, f"{hs_header}.{payload}.{mac}"), 401, "invalid_token")


def test_a_missing_scope_is_403_insufficient_scope(
    photos_api: TestClient, tokens: factories.TokenFactory, person: Any
) -> None:
    issued = tokens.access_token(person, "photos:write", audience=PHOTOS)
    response = call(photos_api, issued.token)
    assert_refused(response, 403, "insufficient_scope")
    assert 'scope="photos:read"' in response.headers["www-authenticate"]


def test_a_malformed_header_is_400_invalid_request(photos_api: TestClient) -> None:
    response = photos_api.get("/photos", headers={"Authorization": "Bearer a b"})
    assert_refused(response, 400, "invalid_request")


def test_a_rotated_key_is_fetched_on_its_first_unknown_kid_but_not_more_often_than_the_floor(
    network: Counting,
    clock: Clock,
    tokens: factories.TokenFactory,
    person: Any,
    services: Services,
) -> None:
    _, client = build(network, clock)
    with client:
        before = tokens.access_token(person, "photos:read", audience=PHOTOS)
        assert call(client, before.token).status_code == 200
        assert network.jwks_fetches == 1

        services.keystore.rotate("RS256")
        after = tokens.access_token(person, "photos:read", audience=PHOTOS)
        assert after.token.split(".")[0] != before.token.split(".")[0]
        assert_refused(call(client, after.token), 401, "invalid_token")
        assert network.jwks_fetches == 1

        clock.now += resource_server.REFRESH_FLOOR + 1
        assert call(client, after.token).status_code == 200
        assert network.jwks_fetches == 2
        assert call(client, before.token).status_code == 200
        assert network.jwks_fetches == 2


def test_with_introspection_a_revoked_token_is_invalid(
    network: Counting,
    clock: Clock,
    tokens: factories.TokenFactory,
    person: Any,
    make: factories.Factory,
    services: Services,
) -> None:
    rs, secret = make.resource_server(PHOTOS, ["photos:read"])
    assert secret is not None
    _, client = build(network, clock, introspection=(rs.id, secret))
    with client:
        issued = tokens.access_token(person, "photos:read", audience=PHOTOS)
        assert call(client, issued.token).status_code == 200
        services.db.call(tokens_revoke, issued.jti)
        assert_refused(call(client, issued.token), 401, "invalid_token")


def tokens_revoke(jti: str) -> None:
    assert oauth_tokens.revoke_access_token(jti, utcnow())


def test_the_authorization_servers_own_api_runs_the_same_core(
    tokens: factories.TokenFactory, person: Any, services: Services
) -> None:
    """One validation core: the verifier behind /api/v1 refuses what the helper refuses."""
    issued = tokens.access_token(person, "photos:read", audience=PHOTOS)
    settings = services.settings
    keystore = services.keystore
    verify = token_format.verify_access_token
    assert verify(keystore, settings, issued.token, utcnow(), audience=PHOTOS)
    assert (
        verify(keystore, settings, issued.token, utcnow(), audience=settings.api_audience) is None
    )


def test_the_readme_example_builds_a_protected_app() -> None:
    """The README's ten-line app runs as written."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Protecting an API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    client = TestClient(namespace["app"], base_url="https://photos.example.com")
    assert client.get("/photos").status_code == 401
    document = client.get("/.well-known/oauth-protected-resource").json()
    assert document["authorization_servers"] == ["https://id.example.com"]


@pytest.mark.parametrize(
    ("resource", "metadata"),
    [
        ("https://api.example.com", "https://api.example.com/.well-known/oauth-protected-resource"),
        (
            "https://api.example.com/v1/",
            "https://api.example.com/.well-known/oauth-protected-resource/v1",
        ),
        (
            "http://127.0.0.1:8000/api/v1",
            "http://127.0.0.1:8000/.well-known/oauth-protected-resource/api/v1",
        ),
    ],
)
def test_the_metadata_url_puts_the_well_known_segment_before_the_path(
    resource: str, metadata: str
) -> None:
    """RFC 9728 §3.1."""
    assert resource_server.metadata_url(resource) == metadata


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"aud": "a"}, ["a"]),
        ({"aud": ["a", "b"]}, ["a", "b"]),
        ({"aud": ["a", 1]}, []),
        ({"aud": {"a": 1}}, []),
        ({}, []),
    ],
)
def test_audiences_reads_a_string_or_a_list_of_strings(
    claims: dict[str, Any], expected: list[str]
) -> None:
    assert resource_server.audiences(claims) == expected


def test_a_challenge_never_carries_a_quote_or_a_control_character() -> None:
    challenge = resource_server.bearer_challenge(
        "https://api.example.com", "invalid_token", 'bad "quote"\r\nX-Injected: 1'
    )
    assert "\r" not in challenge
    assert "\n" not in challenge
    assert challenge.endswith('error_description="bad quoteX-Injected: 1"')


def test_the_helper_accepts_a_dpop_bound_token_with_a_proof_and_refuses_it_as_bearer(
    photos_api: TestClient, tokens: factories.TokenFactory, person: Any
) -> None:
    """RFC 9449 §7 in a third party's API (docs/security.md O116, O109, O112)."""
    key = factories.DPoPKey()
    issued = tokens.access_token(person, "photos:read", audience=PHOTOS, jkt=key.jkt)
    headers = key.headers("GET", f"{PHOTOS}/photos", issued.token)
    assert photos_api.get("/photos", headers=headers).status_code == 200
    replayed = photos_api.get("/photos", headers=headers)
    as_bearer = call(photos_api, issued.token)
    no_ath = photos_api.get(
        "/photos",
        headers=key.headers("GET", f"{PHOTOS}/photos", issued.token, claims={"ath": None}),
    )
    for response, error in ((replayed, "invalid_dpop_proof"), (as_bearer, "invalid_token"),
                            (no_ath, "invalid_dpop_proof")):  # fmt: skip
        assert response.status_code == 401, response.text
        assert response.json()["error"] == error
        assert response.headers["www-authenticate"].startswith(
            f'DPoP resource_metadata="{METADATA}", algs="'
        )
