"""The API plumbing: bearer authentication, scopes, JSON bodies and cursors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from authserver import rest
from authserver.app import create_app
from authserver.settings import Settings
from tests.conftest import API, API_CHALLENGE, ISSUER
from tests.factories import Person, bearer


@dataclass
class Patch:
    name: str | None = None
    tags: list[str] | None = None
    active: bool = True


async def whoami(request: Request) -> JSONResponse:
    principal = await rest.authenticate(request, ["users:read"])
    return JSONResponse({"user_id": principal.user_id, "client_id": principal.client_id})


async def patch(request: Request) -> JSONResponse:
    body = await rest.read_json(request, Patch)
    return JSONResponse({"name": body.name, "tags": body.tags, "active": body.active})


OPERATIONS = [
    rest.Operation("GET", "/whoami", whoami, "Who am I", ("users:read",)),
    rest.Operation("PATCH", "/echo", patch, "Echo", ()),
]


@pytest.fixture
def api(settings: Settings) -> TestClient:
    app = create_app(settings)
    app.router.routes[:0] = rest.routes(OPERATIONS)
    with TestClient(app, base_url=ISSUER) as client:
        yield client


def test_a_live_token_with_the_scope_is_accepted(api, make, tokens) -> None:
    user = make.user()
    issued = tokens.access_token(user, "openid users:read")
    response = api.get("/api/v1/whoami", headers=bearer(issued.token))
    assert response.status_code == 200
    assert response.json() == {"user_id": user.id, "client_id": issued.client_id}


def test_no_token_is_401_with_a_bare_challenge(api) -> None:
    """docs/security.md §0 / J74: no token → 401 `WWW-Authenticate: Bearer`, no error code."""
    response = api.get("/api/v1/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == API_CHALLENGE
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "variant", ["id_token_typ", "other_audience", "revoked", "expired", "garbage", "session_ended"]
)
def test_unusable_tokens_are_invalid_token(api, make, tokens, services, variant) -> None:
    """docs/security.md J74/F52: ID tokens, foreign audiences, revoked, expired, garbage → 401."""
    from authserver.db import utcnow
    from authserver.oauth import tokens as token_store
    from authserver.sessions import models as sessions

    user = make.user()
    kwargs = {
        "id_token_typ": {"typ": "JWT"},
        "other_audience": {"audience": "https://other.example.com"},
        "expired": {"ttl": -10},
    }.get(variant, {})
    issued = tokens.access_token(user, "users:read", **kwargs)
    token = issued.token
    if variant == "revoked":
        services.db.call(token_store.revoke_access_token, issued.jti, utcnow())
    if variant == "garbage":
        token = "not.a.jwt"
    if variant == "session_ended":
        services.db.call(sessions.end, services.app_access, issued.session_id)
    response = api.get("/api/v1/whoami", headers=bearer(token))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_missing_scope_is_403_insufficient_scope(api, make, tokens) -> None:
    response = api.get(
        "/api/v1/whoami", headers=bearer(tokens.access_token(make.user(), "openid").token)
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_malformed_authorization_header_is_400(api) -> None:
    assert api.get("/api/v1/whoami", headers={"Authorization": "Bearer a b"}).status_code == 400
    # RFC 6750 §3.1: another scheme is a request without a bearer token.
    assert api.get("/api/v1/whoami", headers={"Authorization": "Basic abc"}).status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ('{"name": "x", "is_admin": true}', 400),
        ('{"name": 5}', 400),
        ('{"active": "yes"}', 400),
        ('{"tags": ["a", 1]}', 400),
        ("[1, 2]", 400),
        ("{not json", 400),
        ('{"name": "ok", "tags": ["a"], "active": false}', 200),
    ],
)
def test_json_bodies_are_checked_member_by_member(api, body: str, status: int) -> None:
    """docs/security.md J77: unknown (read-only) members are refused, not ignored."""
    response = api.patch("/api/v1/echo", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    if status == 400:
        assert response.headers["content-type"] == "application/problem+json"


def test_non_json_body_is_415(api) -> None:
    response = api.patch("/api/v1/echo", content="name=x")
    assert response.status_code == 415


def test_cursors_round_trip_and_refuse_tampering() -> None:
    cursors = rest.Cursors(b"s" * 32)
    cursor = cursors.encode(["2026-01-01", "abc"])
    assert cursors.decode(cursor) == ["2026-01-01", "abc"]
    with pytest.raises(rest.Invalid):
        cursors.decode(cursor[:-2] + "xx")
    assert cursors.decode(None) is None


def test_openapi_lists_each_operation() -> None:
    document = rest.openapi(OPERATIONS, ISSUER)
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {"/api/v1/whoami", "/api/v1/echo"}
    assert "401" in document["paths"]["/api/v1/whoami"]["get"]["responses"]


def test_lone_surrogates_in_json_are_a_400(api) -> None:
    response = api.patch(
        "/api/v1/echo", content='{"name": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_head_is_answered_like_get(api, make, tokens) -> None:
    """docs/security.md J80: HEAD goes through the same authorization as GET, never a 500."""
    assert api.head("/api/v1/whoami").status_code == 401
    issued = tokens.access_token(make.user(), "users:read")
    assert api.head("/api/v1/whoami", headers=bearer(issued.token)).status_code == 200


@pytest.mark.parametrize("value", ["0", "201", "²", "\u0661\u0660", "-1", "1.5", "9" * 5000, ""])
def test_page_size_outside_1_to_200_is_a_400(value: str) -> None:
    """Never a 500 for bad input: non-ASCII digits and huge numbers included."""
    from starlette.requests import Request as Plain

    request = Plain({"type": "http", "query_string": f"page_size={value}".encode()})
    with pytest.raises(rest.Invalid):
        rest.page_size(request)


def test_api_answers_are_never_stored(
    client: TestClient, person: Callable[..., Person], admin: Person
) -> None:
    """Personal data (everyone's email at GET /users) stays out of caches: every answer
    under /api/v1, problems included, says `no-store`; the public document may be cached."""
    alice = person("alice@example.com")
    for path, token in (("/users", admin.token), ("/users/me", alice.token)):
        response = client.get(API + path, headers=bearer(token))
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
    problem = client.get(API + "/users", headers=bearer(alice.token))
    assert problem.status_code == 403
    assert problem.headers["cache-control"] == "no-store"
    assert "no-store" not in client.get(API + "/openapi.json").headers.get("cache-control", "")
