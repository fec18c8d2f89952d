"""Dynamic client registration (RFC 7591) and its management API (RFC 7592), through the
ASGI app: docs/security.md G55-G57, G59, G60 and K84."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from authlib.oauth2.rfc7591 import ClientMetadataClaims
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from authserver import jsonsafe
from authserver.db import current_session
from authserver.oauth import clients, registration
from authserver.oauth.clients import Client
from authserver.oauth.registration import InitialAccessToken
from authserver.services import Services
from authserver.sessions.models import LoginSession
from authserver.users.models import User
from tests import factories
from tests.conftest import ISSUER, audit_events, count_rows
from tests.oauth.conftest import (
    RP,
    VERIFIER,
    Flow,
    authorization_params,
    location_params,
    stored,
)
from tests.oauth.test_consent import answer, to_consent

CALLBACK = "https://printer.example/cb"
WEB_APP = {"client_name": "Photo Printer", "redirect_uris": [CALLBACK]}


def register(client: TestClient, body: Any, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/register", json=body, headers=headers)


def manage(
    client: TestClient, method: str, body: dict[str, Any], token: str | None, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(method, body["registration_client_uri"], headers=headers, **kw)


def is_error(response: httpx.Response, status: int, error: str) -> bool:
    """An RFC 7591 §3.2.2 error: JSON with the code and a description, never cached."""
    if response.status_code != status or response.headers["cache-control"] != "no-store":
        return False
    body = response.json()
    return body.get("error") == error and bool(body.get("error_description"))


def initial_token(services: Services, **options: Any) -> str:
    _, token = services.db.call(
        registration.create_initial_access_token, services.digester, **options
    )
    return token


def discovery(client: TestClient) -> dict[str, Any]:
    return client.get("/.well-known/openid-configuration").json()


def authlib_accepts(metadata: dict[str, Any], body: dict[str, Any]) -> None:
    """What a client library checks of the answer: Authlib's RFC 7591 metadata claims,
    with the limits the server's discovery document advertises. (Authlib wants a host in
    every redirect URI, so a native app's private-use `com.example.app:/cb`, which RFC 8252
    §7.1 defines with none, is left out of its check.)"""
    web = [uri for uri in body["redirect_uris"] if uri.startswith(("https:", "http:"))]
    options = ClientMetadataClaims.get_claims_options(metadata)
    ClientMetadataClaims({**body, "redirect_uris": web}, {}, options).validate()


@pytest.fixture
def token_mode(app_with: Callable[..., TestClient]) -> TestClient:
    return app_with(registration="token")


# -- G55: what a registration returns and stores ----------------------------------------


def test_a_web_app_registers_and_gets_its_credentials_once(
    client: TestClient, services: Services
) -> None:
    """docs/security.md G55: 201 with client_id, secret, its expiry 0, the RFC 7592 token
    and URI, every metadata value; no-store; the client's own client_id and secret are
    ignored, and only digests of the secret and the token are stored."""
    response = register(
        client, {**WEB_APP, "client_id": "chosen-id", "client_secret": "chosen-secret"}
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["client_id"] != "chosen-id"
    assert body["client_secret"] != "chosen-secret"
    assert len(body["client_secret"]) >= 43
    assert body["client_secret_expires_at"] == 0
    assert abs(body["client_id_issued_at"] - time.time()) < 60
    assert body["registration_client_uri"] == f"{ISSUER}/register/{body['client_id']}"
    assert len(body["registration_access_token"]) >= 43
    assert body["client_name"] == "Photo Printer"
    assert body["redirect_uris"] == [CALLBACK]
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["response_types"] == ["code"]
    assert body["scope"] == "openid profile email offline_access"
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    authlib_accepts(discovery(client), body)

    row = stored(services, body["client_id"])
    assert row is not None
    assert row.dynamically_registered is True
    assert row.skip_consent is False
    columns = [str(getattr(row, c.key)) for c in Client.__table__.columns]
    assert not any(body["client_secret"] in value for value in columns)
    assert not any(body["registration_access_token"] in value for value in columns)
    assert row.registration_token_digest == services.digester.digest(
        registration.ACCESS_TOKEN_PURPOSE, body["registration_access_token"]
    )
    [event] = audit_events(services, "client.registered")
    assert event.target_id == body["client_id"]
    assert event.details["policy"] == "open"


def test_a_public_client_gets_no_secret(client: TestClient, services: Services) -> None:
    response = register(
        client,
        {
            "client_name": "Native",
            "redirect_uris": ["com.example.printer:/cb", "http://127.0.0.1/cb"],
            "token_endpoint_auth_method": "none",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert "client_secret" not in body
    assert "client_secret_expires_at" not in body
    row = stored(services, body["client_id"])
    assert row is not None
    assert row.secret_digest is None
    assert row.is_public


def test_every_known_metadata_value_is_stored_and_returned(
    client: TestClient, services: Services
) -> None:
    jwks = {"keys": [k for k in services.keystore.public_jwks()["keys"] if k["kty"] == "RSA"]}
    sent = {
        **WEB_APP,
        "post_logout_redirect_uris": ["https://printer.example/bye"],
        "client_uri": "https://printer.example/",
        "logo_uri": "https://printer.example/logo.png",
        "policy_uri": "https://printer.example/privacy",
        "tos_uri": "https://printer.example/terms",
        "contacts": ["ops@printer.example"],
        "software_id": "4NRB1-0XZABZI9E6-5SM3R",
        "software_version": "2.1",
        "id_token_signed_response_alg": "ES256",
        "jwks": jwks,
        "scope": "openid email",
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    }
    response = register(client, sent)
    assert response.status_code == 201, response.text
    body = response.json()
    for name, value in sent.items():
        assert body[name] == value, name
    authlib_accepts(discovery(client), body)
    row = stored(services, body["client_id"])
    assert row is not None
    assert row.id_token_signed_response_alg == "ES256"
    assert row.jwks == jwks
    assert row.info["logo_uri"] == "https://printer.example/logo.png"
    assert manage(client, "GET", body, body["registration_access_token"]).json() == {
        k: v for k, v in body.items() if not k.startswith(("client_secret", "registration_a"))
    }


def test_unknown_members_and_trust_flags_are_ignored(
    client: TestClient, services: Services
) -> None:
    """RFC 7591 §2: unknown metadata is ignored; a client cannot make itself first party
    (skip_consent), a resource server, or not dynamically registered."""
    response = register(
        client,
        {
            **WEB_APP,
            "skip_consent": True,
            "resource_server": True,
            "dynamically_registered": False,
            "is_active": False,
            "x-anything": {"nested": [1, 2, {"deep": None}]},
            "client_name#fr": "Imprimante",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert not {"skip_consent", "resource_server", "x-anything", "client_name#fr"} & set(body)
    row = stored(services, body["client_id"])
    assert row is not None
    assert (row.skip_consent, row.resource_server, row.dynamically_registered) == (
        False,
        False,
        True,
    )
    assert row.is_active


def test_a_resent_client_id_never_collides(client: TestClient) -> None:
    first = register(client, WEB_APP).json()
    second = register(client, {**WEB_APP, "client_id": first["client_id"]})
    assert second.status_code == 201
    assert second.json()["client_id"] != first["client_id"]


# -- G56, G57: refused metadata ------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uris",
    [
        ["https://printer.example/cb#frag"],
        ["javascript:alert(1)"],
        ["JaVaScRiPt:alert(1)"],
        ["data:text/html,<script>alert(1)</script>"],
        ["http://printer.example/cb"],
        ["https://*.printer.example/cb"],
        ["/cb"],
        ["printer:/cb"],
        ["https://[printer.example/cb"],
        ["https://user@printer.example/cb"],
        [],
        None,
        "https://printer.example/cb",
        [42],
    ],
)
def test_bad_redirect_uris_are_refused(
    client: TestClient, services: Services, redirect_uris: Any
) -> None:
    """docs/security.md G56: invalid_redirect_uri, nothing stored."""
    response = register(client, {"client_name": "Bad", "redirect_uris": redirect_uris})
    assert is_error(response, 400, "invalid_redirect_uri"), response.text
    assert count_rows(services.db, "clients") == 0


@pytest.mark.parametrize(
    ("changes", "mentions"),
    [
        ({"grant_types": ["password"]}, "password"),
        ({"grant_types": ["implicit"]}, "implicit"),
        ({"grant_types": ["authorization_code", "client_credentials"]}, "initial access token"),
        ({"grant_types": ["refresh_token"]}, "authorization_code"),
        ({"grant_types": "authorization_code"}, "array"),
        ({"response_types": ["token"]}, "code"),
        ({"response_types": ["id_token"]}, "code"),
        ({"response_types": ["code id_token"]}, "code"),
        ({"id_token_signed_response_alg": "none"}, "id_token_signed_response_alg"),
        ({"id_token_signed_response_alg": "HS256"}, "id_token_signed_response_alg"),
        ({"token_endpoint_auth_method": "client_secret_jwt"}, "auth method"),
        ({"token_endpoint_auth_method": 7}, "token_endpoint_auth_method"),
        ({"jwks": {"keys": []}, "jwks_uri": "https://printer.example/jwks"}, "not both"),
        ({"jwks_uri": "http://printer.example/jwks"}, "https"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "kty"),
        ({"jwks": "not a key set"}, "JWK Set"),
        ({"scope": "openid admin"}, "admin"),
        ({"scope": "openid users:read"}, "users:read"),
        ({"scope": "openid made-up"}, "made-up"),
        ({"logo_uri": "http://printer.example/logo.png"}, "logo_uri"),
        ({"policy_uri": "javascript:alert(1)"}, "policy_uri"),
        ({"tos_uri": "https://user:pw@printer.example/"}, "tos_uri"),
        ({"client_uri": ["https://printer.example"]}, "client_uri"),
        ({"client_name": "x" * 201}, "client_name"),
        ({"client_name": "Printer\u202egnp.exe"}, "client_name"),
        ({"client_name": "   "}, "name"),
        ({"contacts": "ops@printer.example"}, "contacts"),
        ({"contacts": ["ops@printer.example\n"]}, "contacts"),
        ({"software_id": {"id": 1}}, "software_id"),
        ({"post_logout_redirect_uris": ["javascript:alert(1)"]}, "redirect URI"),
    ],
)
def test_bad_metadata_is_refused(
    client: TestClient, services: Services, changes: dict[str, Any], mentions: str
) -> None:
    """docs/security.md G57, G59: invalid_client_metadata with a description that names
    the problem; nothing stored."""
    response = register(client, {**WEB_APP, **changes})
    assert is_error(response, 400, "invalid_client_metadata"), response.text
    assert mentions in response.json()["error_description"]
    assert count_rows(services.db, "clients") == 0


@pytest.mark.parametrize("member", sorted(registration.PRIVATE_KEY_MEMBERS - {"k"}))
def test_jwks_with_private_members_is_refused(
    client: TestClient, services: Services, member: str
) -> None:
    """docs/security.md G57: a client sends its public keys, never a private part."""
    [key] = [k for k in services.keystore.public_jwks()["keys"] if k["kty"] == "RSA"][:1]
    response = register(client, {**WEB_APP, "jwks": {"keys": [{**key, member: "AQAB"}]}})
    assert is_error(response, 400, "invalid_client_metadata")
    assert member in response.json()["error_description"]
    assert count_rows(services.db, "clients") == 0


def test_public_clients_cannot_use_client_credentials(token_mode: TestClient) -> None:
    services: Services = token_mode.app.state.services  # type: ignore[attr-defined]
    response = register(
        token_mode,
        {
            "client_name": "Robot",
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "none",
        },
        initial_token(services),
    )
    assert is_error(response, 400, "invalid_client_metadata")
    assert "public client" in response.json()["error_description"]


# -- G60: bounds on the request itself ---------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "mentions"),
    [
        (b'{"client_name": ', "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "JSON object"),
        (b'{"client_name": NaN}', "application/json", "not valid JSON"),
        (b'{"client_name": "\\ud800"}', "application/json", "not valid JSON"),
        (b"client_name=x", "application/x-www-form-urlencoded", "application/json"),
        (b'{"client_name": "x"}', "text/plain", "application/json"),
    ],
)
def test_unreadable_bodies_are_invalid_request(
    client: TestClient, services: Services, content: bytes, content_type: str, mentions: str
) -> None:
    response = client.post("/register", content=content, headers={"content-type": content_type})
    assert is_error(response, 400, "invalid_request"), response.text
    assert mentions in response.json()["error_description"]
    assert count_rows(services.db, "clients") == 0


def test_deeply_nested_json_is_refused_before_parsing(
    client: TestClient, services: Services
) -> None:
    """docs/security.md G60: 60 000 brackets are a 400, never a RecursionError."""
    for deep in (b"[" * 60_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000):
        response = client.post(
            "/register", content=deep, headers={"content-type": "application/json"}
        )
        assert is_error(response, 400, "invalid_request"), response.text
        assert "nested" in response.json()["error_description"]
    assert count_rows(services.db, "clients") == 0


def test_nesting_is_counted_outside_strings_only() -> None:
    assert jsonsafe.depth(b'{"a": "[[[[[[[[[[[[[[[[[["}') == 1
    assert jsonsafe.depth(b'{"a": "\\"[[[[[[[[[[[[", "b": [[1]]}') == 3
    assert jsonsafe.depth(b'{"a": "\\\\", "b": [[[1]]]}') == 4


def test_an_app_registers_for_the_scopes_of_a_registered_resource(
    client: TestClient, make: factories.Factory
) -> None:
    """The MCP path: an anonymous client asks for the scopes of an API an operator
    registered as a protected resource (RFC 8707); `admin` stays out of reach even when a
    resource names it, and scopes nobody registered are still refused."""
    make.resource_server("https://tools.example.com/mcp", ["mcp:tools", "admin"])
    accepted = register(client, {**WEB_APP, "scope": "openid mcp:tools"})
    assert accepted.status_code == 201
    assert accepted.json()["scope"] == "openid mcp:tools"
    for scope in ("openid admin", "openid mcp:other"):
        assert is_error(
            register(client, {**WEB_APP, "scope": scope}), 400, "invalid_client_metadata"
        )


def test_a_megabyte_body_is_413(client: TestClient, services: Services) -> None:
    """docs/security.md G60."""
    padding = "x" * (1024 * 1024)
    response = client.post(
        "/register",
        content=b'{"client_name": "' + padding.encode() + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert count_rows(services.db, "clients") == 0


def test_ten_thousand_redirect_uris_are_refused_fast(
    client: TestClient, services: Services
) -> None:
    """docs/security.md G60: ten thousand real URIs do not fit in the body (413); ten
    thousand that fit are refused by their count, before any URI is looked at."""
    for uris, status, error in (
        ([f"https://printer.example/cb{i}" for i in range(10_000)], 413, None),
        (["x"] * 10_000, 400, "invalid_redirect_uri"),
    ):
        started = time.monotonic()
        response = register(client, {"client_name": "Many", "redirect_uris": uris})
        assert time.monotonic() - started < 2
        assert response.status_code == status
        if error is not None:
            assert is_error(response, status, error)
            assert "at most 20" in response.json()["error_description"]
    assert count_rows(services.db, "clients") == 0


def test_registration_is_rate_limited_per_ip(app_with: Callable[..., TestClient]) -> None:
    """docs/security.md G60: every attempt counts, refused ones too; past the budget 429
    JSON with Retry-After, and nothing registered."""
    client = app_with(registration_rate_per_ip=3)
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    assert register(client, WEB_APP).status_code == 201
    assert register(client, {"client_name": "Bad"}).status_code == 400
    assert register(client, WEB_APP).status_code == 201
    refused = register(client, WEB_APP)
    assert refused.status_code == 429
    assert refused.headers["cache-control"] == "no-store"
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    assert refused.json()["error_description"]
    assert count_rows(services.db, "clients") == 2


# -- RFC 7592: read, replace, delete --------------------------------------------------------


def test_a_client_reads_replaces_and_deletes_its_registration(
    client: TestClient, services: Services
) -> None:
    body = register(client, {**WEB_APP, "logo_uri": "https://printer.example/logo.png"}).json()
    token = body["registration_access_token"]

    read = manage(client, "GET", body, token)
    assert read.status_code == 200
    assert read.headers["cache-control"] == "no-store"
    assert read.json()["redirect_uris"] == [CALLBACK]
    assert "client_secret" not in read.json()
    assert "registration_access_token" not in read.json()

    replacement = {
        "client_id": body["client_id"],
        "client_secret": body["client_secret"],
        "client_name": "Photo Printer 2",
        "redirect_uris": ["https://printer.example/v2/cb"],
        "scope": "openid",
    }
    replaced = manage(client, "PUT", body, token, json=replacement)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["client_name"] == "Photo Printer 2"
    assert replaced.json()["redirect_uris"] == ["https://printer.example/v2/cb"]
    assert replaced.json()["scope"] == "openid"
    assert "logo_uri" not in replaced.json()
    authlib_accepts(discovery(client), replaced.json())
    row = stored(services, body["client_id"])
    assert row is not None
    assert row.redirect_uris == ["https://printer.example/v2/cb"]
    assert "logo_uri" not in row.info
    assert row.dynamically_registered

    deleted = manage(client, "DELETE", body, token)
    assert deleted.status_code == 204
    assert deleted.headers["cache-control"] == "no-store"
    assert stored(services, body["client_id"]) is None
    assert manage(client, "GET", body, token).status_code == 401
    assert [e.event for e in audit_events(services, prefix="client.")] == [
        "client.registered",
        "client.updated",
        "client.deleted",
    ]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"client_id": None}, "invalid_request"),
        ({"client_id": "someone-else"}, "invalid_request"),
        ({"client_secret": "not-the-secret"}, "invalid_request"),
        ({"token_endpoint_auth_method": "none"}, "invalid_client_metadata"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"scope": "openid admin"}, "invalid_client_metadata"),
        ({"grant_types": ["authorization_code", "client_credentials"]}, "invalid_client_metadata"),
    ],
)
def test_a_bad_replacement_changes_nothing(
    client: TestClient, services: Services, changes: dict[str, Any], error: str
) -> None:
    body = register(client, WEB_APP).json()
    replacement = {**WEB_APP, "client_id": body["client_id"], "client_name": "Changed"}
    replacement.update(changes)
    response = manage(client, "PUT", body, body["registration_access_token"], json=replacement)
    assert is_error(response, 400, error), response.text
    row = stored(services, body["client_id"])
    assert row is not None
    assert row.name == "Photo Printer"
    assert row.redirect_uris == [CALLBACK]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_management_needs_the_clients_own_token(
    client: TestClient, services: Services, make: factories.Factory, method: str
) -> None:
    """docs/security.md G60, RFC 7592 §2: no token, another client's token, a malformed
    header, an unknown client or an operator's client: 401 invalid_token with a Bearer
    challenge, and nothing changes."""
    mine = register(client, WEB_APP).json()
    theirs = register(client, {**WEB_APP, "client_name": "Other"}).json()
    operators, _ = make.client(name="Operator's app")
    unknown = {**mine, "registration_client_uri": f"{ISSUER}/register/no-such-client"}
    operated = {**mine, "registration_client_uri": f"{ISSUER}/register/{operators.id}"}
    body = {**WEB_APP, "client_id": mine["client_id"], "client_name": "Hijacked"}
    kw = {"json": body} if method == "PUT" else {}
    attempts = [
        manage(client, method, mine, None, **kw),
        manage(client, method, mine, theirs["registration_access_token"], **kw),
        manage(client, method, mine, mine["registration_access_token"] + "x", **kw),
        manage(client, method, unknown, mine["registration_access_token"], **kw),
        manage(client, method, operated, mine["registration_access_token"], **kw),
        client.request(
            method,
            mine["registration_client_uri"],
            headers={"Authorization": f"Basic {mine['registration_access_token']}"},
            **kw,
        ),
    ]
    for response in attempts:
        assert is_error(response, 401, "invalid_token"), response.text
        assert response.headers["www-authenticate"].startswith("Bearer ")
        assert response.headers["access-control-allow-origin"] == "*"
    row = stored(services, mine["client_id"])
    assert row is not None
    assert row.name == "Photo Printer"
    assert stored(services, operators.id) is not None


# -- token and closed modes ----------------------------------------------------------------


def test_token_mode_needs_a_live_initial_access_token(
    token_mode: TestClient, frozen: Callable[[float], None]
) -> None:
    """docs/security.md G60: no token or a wrong one is 401 invalid_token with a Bearer
    challenge; an expired one as well."""
    services: Services = token_mode.app.state.services  # type: ignore[attr-defined]
    expired = initial_token(services, expires_in=60)
    frozen(61)
    for token in (None, "not-a-token", expired):
        response = register(token_mode, WEB_APP, token)
        assert is_error(response, 401, "invalid_token"), response.text
        assert response.headers["www-authenticate"].startswith("Bearer ")
    assert count_rows(services.db, "clients") == 0

    response = register(token_mode, WEB_APP, initial_token(services, expires_in=60))
    assert response.status_code == 201, response.text
    [event] = audit_events(services, "client.registered")
    assert event.details["policy"] == "token"


def test_a_limited_token_counts_only_registrations_that_succeed(
    token_mode: TestClient,
) -> None:
    services: Services = token_mode.app.state.services  # type: ignore[attr-defined]
    token = initial_token(services, max_uses=1)
    refused = register(token_mode, {"client_name": "Bad"}, token)
    assert is_error(refused, 400, "invalid_redirect_uri")
    assert register(token_mode, WEB_APP, token).status_code == 201
    assert is_error(register(token_mode, WEB_APP, token), 401, "invalid_token")
    [row] = services.db.call(lambda: list(current_session().scalars(select(InitialAccessToken))))
    assert row.uses == 1


def test_token_mode_allows_client_credentials_but_never_admin(token_mode: TestClient) -> None:
    services: Services = token_mode.app.state.services  # type: ignore[attr-defined]
    token = initial_token(services)
    robot = {
        "client_name": "Robot",
        "grant_types": ["client_credentials"],
        "scope": "users:read",
    }
    created = register(token_mode, robot, token)
    assert created.status_code == 201, created.text
    assert created.json()["grant_types"] == ["client_credentials"]
    assert created.json()["response_types"] == []
    admin = register(token_mode, {**robot, "scope": "admin"}, token)
    assert is_error(admin, 400, "invalid_client_metadata")

    body = created.json()
    kept = manage(
        token_mode,
        "PUT",
        body,
        body["registration_access_token"],
        json={**robot, "client_id": body["client_id"], "client_name": "Robot 2"},
    )
    assert kept.status_code == 200, kept.text
    assert kept.json()["grant_types"] == ["client_credentials"]
    tokens = token_mode.post(
        "/token",
        data={"grant_type": "client_credentials"},
        auth=(body["client_id"], body["client_secret"]),
    )
    assert tokens.status_code == 200, tokens.text


def test_closed_registration_answers_404_and_is_not_advertised(
    app_with: Callable[..., TestClient],
) -> None:
    client = app_with(registration="closed")
    response = register(client, WEB_APP)
    assert response.status_code == 404
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"]
    assert client.get(f"/register/{'x' * 22}").status_code == 404
    metadata = client.get("/.well-known/openid-configuration").json()
    assert "registration_endpoint" not in metadata
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    assert count_rows(services.db, "clients") == 0


@pytest.mark.parametrize("mode", ["open", "token"])
def test_discovery_advertises_the_registration_endpoint(
    app_with: Callable[..., TestClient], mode: str
) -> None:
    client = app_with(registration=mode)
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        assert client.get(path).json()["registration_endpoint"] == f"{ISSUER}/register"


# -- CORS ----------------------------------------------------------------------------------


def test_any_origin_may_register_without_credentials(client: TestClient) -> None:
    preflight = client.options(
        "/register",
        headers={
            "Origin": "https://spa.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://spa.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in preflight.headers

    created = client.post("/register", json=WEB_APP, headers={"Origin": "https://spa.example"})
    refused = client.post("/register", json={}, headers={"Origin": "https://spa.example"})
    for response in (created, refused):
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers

    management = client.options(
        created.json()["registration_client_uri"],
        headers={"Origin": "https://spa.example", "Access-Control-Request-Method": "PUT"},
    )
    assert management.status_code == 204
    assert "PUT" in management.headers["access-control-allow-methods"]


# -- the registered client at work: code flow and consent -----------------------------------


def _registered_rp(services: Services, body: dict[str, Any], redirect_uri: str) -> RP:
    row = stored(services, body["client_id"])
    assert row is not None
    return RP(row, body.get("client_secret"), redirect_uri)


def test_a_registered_client_completes_the_code_flow_with_pkce(
    client: TestClient, services: Services, flow: Flow, user: User, signed_in: LoginSession
) -> None:
    for sent in (WEB_APP, {**WEB_APP, "token_endpoint_auth_method": "none"}):
        rp = _registered_rp(services, register(client, sent).json(), CALLBACK)
        page = to_consent(client, rp)
        code = location_params(answer(client, page, "allow"))["code"]
        tokens = flow.exchange(rp, code, verifier=VERIFIER)
        assert tokens.status_code == 200, tokens.text
        body = tokens.json()
        assert {"access_token", "id_token", "refresh_token"} <= set(body)
        assert flow.userinfo(body["access_token"]).json()["sub"] == user.id
        refreshed = flow.refresh(rp, body["refresh_token"])
        assert refreshed.status_code == 200, refreshed.text


def test_a_registered_client_always_asks_and_is_marked_unverified(
    client: TestClient, services: Services, user: User, signed_in: LoginSession
) -> None:
    """Consent every time, even after Allow and even though the client asked for
    skip_consent; the page says it is unverified, where the answer goes, and shows the
    registered links, escaped (docs/security.md G59)."""
    body = register(
        client,
        {
            **WEB_APP,
            "client_name": "<script>alert(1)</script> Printer",
            "skip_consent": True,
            "logo_uri": "https://printer.example/logo.png?a=1&b=<x>",
            "policy_uri": "https://printer.example/privacy",
            "tos_uri": "https://printer.example/terms",
        },
    ).json()
    rp = _registered_rp(services, body, CALLBACK)
    for _ in range(2):
        page = to_consent(client, rp, prompt=None)
        assert "Not verified by the operator of this server" in page.text
        assert "<strong>printer.example</strong>" in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; Printer" in page.text
        assert "<script>alert" not in page.text
        assert 'src="https://printer.example/logo.png?a=1&amp;b=&lt;x&gt;"' in page.text
        assert 'href="https://printer.example/privacy"' in page.text
        assert 'href="https://printer.example/terms"' in page.text
        assert 'value="allow">Allow</button>' in page.text
        assert 'value="deny" class="secondary">Deny</button>' in page.text
        assert "code" in location_params(answer(client, page, "allow"))


def test_an_operator_flag_does_not_silence_a_registered_clients_consent(
    client: TestClient, services: Services, user: User, signed_in: LoginSession
) -> None:
    """Even if skip_consent is set on a dynamically registered client (by an
    administrator's update), consent is still asked."""
    rp = _registered_rp(services, register(client, WEB_APP).json(), CALLBACK)

    def skip_consent() -> None:
        row = clients.get(rp.id)
        assert row is not None
        row.skip_consent = True

    services.db.call(skip_consent)
    assert "Not verified by the operator" in to_consent(client, rp).text


def test_prompt_none_is_consent_required_for_a_registered_client(
    client: TestClient, services: Services, user: User, signed_in: LoginSession
) -> None:
    """The screen is always shown to a self-registered client's person, so a request that
    forbids showing it cannot succeed, not even after an earlier consent."""
    rp = _registered_rp(services, register(client, WEB_APP).json(), CALLBACK)
    silent = client.get("/authorize", params=authorization_params(rp, prompt="none"))
    assert location_params(silent)["error"] == "consent_required"
    answer(client, to_consent(client, rp), "allow")
    silent = client.get("/authorize", params=authorization_params(rp, prompt="none"))
    assert location_params(silent)["error"] == "consent_required"


def test_the_unverified_marker_names_a_native_apps_scheme(
    client: TestClient, services: Services, user: User, signed_in: LoginSession
) -> None:
    native = "com.example.printer:/cb"
    body = register(
        client,
        {"redirect_uris": [native], "token_endpoint_auth_method": "none"},
    ).json()
    assert body["client_name"] == "com.example.printer"
    page = to_consent(client, _registered_rp(services, body, native))
    assert f"<strong>{native}</strong>" in page.text


# -- K84: races ------------------------------------------------------------------------------


def post_all(app: Starlette, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as client:
            return list(await asyncio.gather(*(client.post("/register", **r) for r in requests)))

    return asyncio.run(run())


def test_parallel_registrations_make_distinct_clients(app: Starlette, services: Services) -> None:
    """docs/security.md K84: twenty at once, twenty clients, no 5xx."""
    responses = post_all(app, [{"json": WEB_APP}] * 20)
    assert [r.status_code for r in responses] == [201] * 20
    assert len({r.json()["client_id"] for r in responses}) == 20
    assert count_rows(services.db, "clients") == 20


def test_parallel_registrations_spend_a_limited_token_exactly(
    app_with: Callable[..., TestClient],
) -> None:
    client = app_with(registration="token")
    app: Starlette = client.app  # type: ignore[assignment]
    services: Services = app.state.services
    token = initial_token(services, max_uses=5)
    headers = {"Authorization": f"Bearer {token}"}
    responses = post_all(app, [{"json": WEB_APP, "headers": headers}] * 20)
    assert sorted(r.status_code for r in responses) == [201] * 5 + [401] * 15
    assert count_rows(services.db, "clients") == 5


# -- fuzzing ---------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
GOOD_URIS = st.sampled_from(
    [CALLBACK, "http://127.0.0.1/cb", "http://[::1]/cb", "com.example.app:/cb"]
)
ODD_URIS = st.sampled_from(
    [
        "https://printer.example/cb#x",
        "javascript:alert(1)",
        "https://[printer.example/cb",
        "http://printer.example/cb",
        "https://u@printer.example/",
        "",
    ]
) | st.text(max_size=25)
PRINTABLE = st.characters(categories=("L", "M", "N", "P", "S"), exclude_characters="\u00ad")
HTTPS = st.sampled_from(["https://printer.example/", "https://printer.example/a?b=<c>&d"])


def good_values(public_jwks: dict[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "redirect_uris": st.lists(GOOD_URIS, min_size=1, max_size=3),
        "post_logout_redirect_uris": st.lists(HTTPS, max_size=2),
        "grant_types": st.sampled_from(
            [["authorization_code"], ["authorization_code", "refresh_token"]]
        ),
        "response_types": st.just(["code"]),
        "token_endpoint_auth_method": st.sampled_from(
            ["none", "client_secret_basic", "client_secret_post"]
        ),
        "client_name": st.text(PRINTABLE, min_size=1, max_size=40),
        "client_uri": HTTPS,
        "logo_uri": HTTPS,
        "policy_uri": HTTPS,
        "tos_uri": HTTPS,
        "scope": st.sampled_from(
            ["openid", "openid profile email offline_access", "openid organization"]
        ),
        "contacts": st.lists(st.sampled_from(["ops@printer.example", "+1 555 0100"]), max_size=2),
        "jwks": st.just(public_jwks),
        "jwks_uri": st.just("https://printer.example/jwks.json"),
        "software_id": st.text(PRINTABLE, max_size=20),
        "software_version": st.text(PRINTABLE, max_size=20),
        "id_token_signed_response_alg": st.sampled_from(["RS256", "ES256"]),
    }


def member_values(public_jwks: dict[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
    """For each known member: valid values (drawn most often), odd ones, and any JSON."""
    good = good_values(public_jwks)
    odd = {
        "redirect_uris": st.lists(GOOD_URIS | ODD_URIS, max_size=4),
        "post_logout_redirect_uris": st.lists(ODD_URIS, max_size=2),
        "grant_types": st.lists(
            st.sampled_from(
                [
                    "authorization_code",
                    "refresh_token",
                    "client_credentials",
                    "password",
                    "implicit",
                ]
            ),
            max_size=3,
        ),
        "response_types": st.lists(st.sampled_from(["code", "token", "id_token", ""]), max_size=2),
        "token_endpoint_auth_method": st.sampled_from(["private_key_jwt", "tls_client_auth", ""]),
        "scope": st.sampled_from(["openid admin", "users:read", ""]) | st.text(max_size=20),
        "id_token_signed_response_alg": st.sampled_from(["none", "HS256", "EdDSA"]),
        "logo_uri": ODD_URIS,
        "policy_uri": ODD_URIS,
        "jwks_uri": ODD_URIS,
        "jwks": st.sampled_from(
            [
                {"keys": []},
                {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]},
                {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]},
                {"keys": [{**public_jwks["keys"][0], "d": "AQAB"}]},
            ]
        ),
        "contacts": st.lists(st.text(max_size=20), max_size=3),
    }
    names = [*good, "client_id", "client_secret", "skip_consent", "resource_server"]
    return {
        name: st.one_of(
            *([good[name]] * 4 if name in good else []),
            *([odd[name]] if name in odd else []),
            JSON_VALUES,
        )
        for name in names
    }


def bodies(public_jwks: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid documents, documents mixing valid, odd and random members, and any JSON."""
    values = member_values(public_jwks)
    mixed = st.fixed_dictionaries({"redirect_uris": values.pop("redirect_uris")}, optional=values)
    good = good_values(public_jwks)
    del good["jwks_uri"]
    valid = st.fixed_dictionaries({"redirect_uris": good.pop("redirect_uris")}, optional=good)
    return st.one_of(valid, mixed, mixed, JSON_VALUES)


def test_fuzzed_registrations_never_fail_and_never_half_register(
    app_with: Callable[..., TestClient],
) -> None:
    """Random JSON of every shape for the known members, at POST /register and at PUT
    /register/{id}: never a 5xx; a refused registration stores no client, a refused
    replacement changes nothing, and what is accepted satisfies Authlib's client-side
    metadata checks."""
    client = app_with(registration_rate_per_ip=10**9)
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    metadata = discovery(client)
    public_jwks = {
        "keys": [k for k in services.keystore.public_jwks()["keys"] if k["kty"] == "RSA"]
    }
    mine = register(client, {**WEB_APP, "token_endpoint_auth_method": "client_secret_post"}).json()
    token = mine["registration_access_token"]
    headers = {"content-type": "application/json"}
    seen: set[tuple[bool, int]] = set()

    @given(body=bodies(public_jwks), replace=st.booleans())
    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(body: Any, replace: bool) -> None:
        before = count_rows(services.db, "clients")
        if replace:
            if isinstance(body, dict):
                body = {**body, "client_id": mine["client_id"]}
                body.pop("client_secret", None)
                if body.get("token_endpoint_auth_method") in clients.AUTH_METHODS:
                    body["token_endpoint_auth_method"] = "client_secret_post"
            was = manage(client, "GET", mine, token).json()
            response = client.put(
                mine["registration_client_uri"],
                content=json.dumps(body).encode(),
                headers={**headers, "Authorization": f"Bearer {token}"},
            )
        else:
            response = client.post("/register", content=json.dumps(body).encode(), headers=headers)
        assert response.status_code < 500, response.text
        assert response.headers["cache-control"] == "no-store"
        seen.add((replace, response.status_code))
        answered = response.json()
        if response.status_code in (200, 201):
            authlib_accepts(metadata, answered)
        else:
            assert answered["error"] in {
                "invalid_request", "invalid_redirect_uri", "invalid_client_metadata"
            }  # fmt: skip
        created = 1 if response.status_code == 201 else 0
        assert count_rows(services.db, "clients") == before + created
        if replace and response.status_code != 200:
            assert manage(client, "GET", mine, token).json() == was

    check()
    assert {(False, 201), (False, 400), (True, 200), (True, 400)} <= seen


def test_a_cli_registers_for_the_device_flow_without_redirect_uris(client: TestClient) -> None:
    """RFC 8628 clients (TVs, command-line tools) have no redirect URI: an anonymous
    registration asks for the device grant alone and gets a public client for it."""
    body = {
        "client_name": "A command-line tool",
        "grant_types": [clients.DEVICE_CODE, "refresh_token"],
        "token_endpoint_auth_method": "none",
    }
    response = register(client, body)
    assert response.status_code == 201, response.text
    registered = response.json()
    assert registered["grant_types"] == [clients.DEVICE_CODE, "refresh_token"]
    assert "client_secret" not in registered
    started = client.post(
        "/device_authorization", data={"client_id": registered["client_id"], "scope": "openid"}
    )
    assert started.status_code == 200, started.text
    assert started.json()["user_code"]
