"""Hostile structure never reaches a parser unbounded: deeply nested JSON bodies, JWT headers
and claims, huge tokens and header blocks are a clear 4xx, never a 500 (docs/security.md §0);
and the 500 that remains for real bugs looks like every other answer."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from authserver import jsonsafe, resource_server
from authserver.app import create_app
from authserver.oauth import token_format
from authserver.services import Services
from authserver.settings import Settings
from tests import factories
from tests.conftest import API, ISSUER, is_problem
from tests.factories import Person, bearer

DEEP = b"[" * 30_000 + b"]" * 30_000
DEEP_OBJECT = b'{"a":' * 5_000 + b"1" + b"}" * 5_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- the scanner -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{"}', 1),
        (b'{"a": "\\"[[[[", "b": [[]]}', 3),
        (b'"\\\\"[[', 2),
        (b"42", 0),
        (DEEP, 30_000),
    ],
)
def test_depth_ignores_brackets_inside_strings(raw: bytes, expected: int) -> None:
    assert jsonsafe.depth(raw) == expected


def test_loads_refuses_deep_and_large_documents_before_parsing() -> None:
    with pytest.raises(jsonsafe.UnsafeJson, match="nested deeper"):
        jsonsafe.loads(DEEP, max_bytes=len(DEEP))
    with pytest.raises(jsonsafe.UnsafeJson, match="larger than"):
        jsonsafe.loads(b"[" + b"1," * 40_000 + b"1]")
    assert jsonsafe.loads('{"name": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == {
        "name": "[" * 40
    }


# -- JSON bodies -----------------------------------------------------------------------------


def post_raw(client: TestClient, method: str, path: str, token: str, body: bytes) -> object:
    headers = {**bearer(token), "content-type": "application/json"}
    return client.request(method, API + path, content=body, headers=headers)


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["arrays", "objects"])
@pytest.mark.parametrize(
    ("method", "path", "admin"),
    [
        ("PATCH", "/users/me", False),
        ("POST", "/users/me/password", False),
        ("POST", "/organizations", False),
        ("POST", "/users", True),
    ],
)
def test_deeply_nested_json_is_a_400_problem(
    client: TestClient,
    person: Callable[..., Person],
    method: str,
    path: str,
    admin: bool,
    body: bytes,
) -> None:
    who = (
        person("root@example.com", scope="admin", is_admin=True)
        if admin
        else person("alice@example.com", scope="users:write organizations:write")
    )
    response = post_raw(client, method, path, who.token, body)
    assert is_problem(response, 400), response.text  # type: ignore[arg-type]
    assert "nested deeper" in response.json()["detail"]  # type: ignore[attr-defined]


def test_brackets_inside_strings_are_just_text(
    client: TestClient, person: Callable[..., Person]
) -> None:
    alice = person("alice@example.com")
    body = json.dumps({"name": "[" * 100 + "{" * 100}).encode()
    response = post_raw(client, "PATCH", "/users/me", alice.token, body)
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]


# -- JWTs from outside -----------------------------------------------------------------------


def forged(header: bytes, payload: bytes = b"{}") -> str:
    return f"{b64(header)}.{b64(payload)}.{b64(b'x' * 256)}"


def test_decode_refuses_huge_and_deep_tokens_without_parsing(services: Services) -> None:
    keystore = services.keystore
    huge = forged(b'{"alg":"RS256","typ":"at+jwt","x":"' + b"a" * 300_000 + b'"}')
    assert token_format.decode_own_jwt(keystore, huge, typ="at+jwt") is None
    deep_header = forged(b"[" * 2_500 + b"]" * 2_500)
    assert len(deep_header) < resource_server.JWT_MAX_LENGTH
    assert token_format.decode_own_jwt(keystore, deep_header, typ="at+jwt") is None
    kid = services.keystore.signing_key("RS256").kid
    header = json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": kid}).encode()
    deep_claims = forged(header, b"[" * 2_500 + b"]" * 2_500)
    assert token_format.decode_own_jwt(keystore, deep_claims, typ="at+jwt") is None


@pytest.mark.parametrize("path", ["/userinfo", API + "/users/me"])
def test_a_nested_jwt_header_or_claims_is_a_401(
    client: TestClient, services: Services, path: str
) -> None:
    kid = services.keystore.signing_key("RS256").kid
    header = json.dumps({"alg": "RS256", "typ": "at+jwt", "kid": kid}).encode()
    for token in (forged(b"[" * 2_500 + b"]" * 2_500), forged(header, b"{" * 2_500)):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 401, response.text


def test_a_300_kb_token_is_refused_before_the_app(client: TestClient) -> None:
    """A 300 KB header is past the request-header limit: 431 before any JWT parsing."""
    token = forged(b'{"alg":"RS256","x":"' + b"a" * 300_000 + b'"}')
    for path in ("/userinfo", API + "/users/me"):
        assert client.get(path, headers=bearer(token)).status_code == 431


def test_a_nested_id_token_hint_is_an_answer_not_a_500(
    client: TestClient, make: factories.Factory
) -> None:
    hint = forged(b"[" * 2_500 + b"]" * 2_500)
    response = client.get("/logout", params={"id_token_hint": hint})
    assert response.status_code < 500
    rp, _ = make.client(redirect_uris=["https://app.example.com/cb"])
    response = client.post(
        "/authorize",
        data={
            "response_type": "code",
            "client_id": rp.id,
            "redirect_uri": "https://app.example.com/cb",
            "scope": "openid",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
            "id_token_hint": forged(b'{"a":' * 2_000 + b"1" + b"}" * 2_000),
        },
    )
    assert response.status_code < 500


# -- the last resort -------------------------------------------------------------------------


@pytest.fixture
def exploding(settings: Settings) -> Starlette:
    app = create_app(settings)

    def explode(request: Request) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    app.router.routes.append(Route("/explode", explode))
    app.router.routes.append(Route(API + "/explode", explode))
    return app


@pytest.mark.parametrize("path", ["/explode", API + "/explode"])
def test_a_500_carries_the_security_headers_and_request_id(exploding: Starlette, path: str) -> None:
    with TestClient(exploding, base_url=ISSUER, raise_server_exceptions=False) as client:
        response = client.get(path, headers={"x-request-id": "probe-123"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "probe-123"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert "recursion" not in response.text
    if path.startswith(API):
        assert is_problem(response, 500)
