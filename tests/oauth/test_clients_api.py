"""`/api/v1/clients`: administrators' client CRUD and secret rotation (SPEC §7).

Cited: docs/security.md J74 (tokens and scopes), J77 (mass assignment), J78 (a demoted admin
stops at once), and the storage rule that a secret is kept only as a keyed digest and is
shown once.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from authserver.oauth import clients
from authserver.services import Services
from tests import factories
from tests.conftest import Api, audit_events, is_problem
from tests.factories import Person
from tests.oauth.conftest import CLIENTS, all_clients, client_credentials, stored

NEW = {
    "client_name": "Photo Printer",
    "redirect_uris": ["https://print.example.com/cb"],
    "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
    "scope": "openid profile api",
}


def create(api: Api, admin: Person, **changes: Any) -> dict[str, Any]:
    response = api.call("POST", CLIENTS, admin.token, {**NEW, **changes})
    assert response.status_code == 201, response.text
    return response.json()


def test_create_returns_the_secret_once(api: Api, admin: Person, services: Services) -> None:
    response = api.call("POST", CLIENTS, admin.token, NEW)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    assert response.headers["location"] == f"{CLIENTS}/{created['client_id']}"
    assert created["client_name"] == "Photo Printer"
    assert created["response_types"] == ["code"]
    assert created["token_endpoint_auth_method"] == "client_secret_basic"
    secret = created["client_secret"]
    row = stored(services, created["client_id"])
    assert row is not None
    assert row.secret_digest is not None
    assert services.digester.matches(clients.SECRET_PURPOSE, secret, row.secret_digest)
    assert secret not in row.secret_digest
    read = api.call("GET", response.headers["location"], admin.token)
    assert read.status_code == 200
    assert "client_secret" not in read.json()
    assert row.secret_digest not in read.text
    assert client_credentials(api.client, created["client_id"], secret).status_code == 200
    [event] = audit_events(services, prefix="client.")
    assert (event.event, event.actor_id, event.target_id) == (
        "client.created",
        admin.user.id,
        created["client_id"],
    )
    assert secret not in str(event.details)


def test_create_a_public_client_has_no_secret(api: Api, admin: Person) -> None:
    created = create(
        api,
        admin,
        redirect_uris=["http://127.0.0.1/cb"],
        grant_types=["authorization_code"],
        token_endpoint_auth_method="none",
    )
    assert "client_secret" not in created
    assert created["token_endpoint_auth_method"] == "none"


def test_create_defaults(api: Api, admin: Person) -> None:
    created = create(api, admin, grant_types=[], scope=clients.DEFAULT_SCOPE)
    assert created["grant_types"] == ["authorization_code", "refresh_token"]
    assert created["skip_consent"] is False
    assert created["resource_server"] is False
    assert created["is_active"] is True


@pytest.mark.parametrize(
    "changes",
    [
        {"redirect_uris": ["javascript:alert(1)"]},
        {"redirect_uris": ["https://*.example.com/cb"]},
        {"redirect_uris": ["http://app.example.com/cb"]},
        {"redirect_uris": ["https://app.example.com/cb#x"]},
        {"redirect_uris": []},
        {"grant_types": ["password"]},
        {"grant_types": ["implicit"]},
        {"token_endpoint_auth_method": "client_secret_jwt"},
        {"token_endpoint_auth_method": "none"},
        {"post_logout_redirect_uris": ["data:text/html,x"]},
        {"client_name": ""},
        {"client_name": "   "},
        {"client_name": "x" * 201},
        {"client_name": "a\x00b"},
        {"scope": "openid\x00admin"},
        {"client_name": 5},
        {"skip_consent": "yes"},
        {"resource_server": 1},
        {"token_endpoint_auth_method": "none", "resource_server": True},
        {"secret_digest": "abc"},
        {"client_id": "mine"},
        {"client_secret": "chosen-by-me"},
        {"dynamically_registered": True},
    ],
)
def test_create_validates_like_the_cli(
    api: Api, admin: Person, services: Services, changes: dict[str, Any]
) -> None:
    """The CLI's validation (clients.create), plus J77: no member the API does not take."""
    before = all_clients(services)
    response = api.call("POST", CLIENTS, admin.token, {**NEW, **changes})
    assert is_problem(response, 400), response.text
    assert all_clients(services) == before


def test_list_pages(api: Api, admin: Person, make: factories.Factory) -> None:
    made = [make.client(name=f"App {n}")[0].id for n in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"page_size": "2", **({"cursor": cursor} if cursor else {})}
        body = api.call("GET", CLIENTS, admin.token, params=params).json()
        seen += [c["client_id"] for c in body["items"]]
        assert all("client_secret" not in c and "secret_digest" not in c for c in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen[-5:] == made
    make.user()
    users_page = api.call("GET", "/api/v1/users?page_size=1", admin.token).json()
    assert users_page["next_cursor"]
    foreign = api.call("GET", CLIENTS, admin.token, params={"cursor": users_page["next_cursor"]})
    assert is_problem(foreign, 400)


@pytest.mark.parametrize("client_id", ["nope", "x" * 65, "a%00b"])
def test_unknown_clients_are_404(api: Api, admin: Person, client_id: str) -> None:
    for method, body in (("GET", None), ("PATCH", {"client_name": "x"}), ("DELETE", None)):
        assert is_problem(api.call(method, f"{CLIENTS}/{client_id}", admin.token, body), 404)
    assert is_problem(api.call("POST", f"{CLIENTS}/{client_id}/secret", admin.token), 404)


def test_update(api: Api, admin: Person, services: Services) -> None:
    created = create(api, admin)
    path = f"{CLIENTS}/{created['client_id']}"
    patch = {
        "client_name": "Photo Printer 2",
        "redirect_uris": ["https://print.example.com/cb2", "https://print.example.com/cb2"],
        "post_logout_redirect_uris": ["https://print.example.com/bye"],
        "grant_types": ["client_credentials"],
        "scope": "api api reports",
        "skip_consent": True,
        "resource_server": True,
    }
    response = api.call("PATCH", path, admin.token, patch)
    assert response.status_code == 200
    updated = response.json()
    assert updated["client_name"] == "Photo Printer 2"
    assert updated["redirect_uris"] == ["https://print.example.com/cb2"]
    assert updated["post_logout_redirect_uris"] == ["https://print.example.com/bye"]
    assert updated["grant_types"] == ["client_credentials"]
    assert updated["response_types"] == []
    assert updated["scope"] == "api reports"
    assert updated["skip_consent"] is True
    assert updated["resource_server"] is True
    assert api.call("GET", path, admin.token).json() == updated
    events = audit_events(services, "client.updated")
    assert events[0].details["fields"] == [
        "name",
        "redirect_uris",
        "post_logout_redirect_uris",
        "grant_types",
        "response_types",
        "scope",
        "skip_consent",
        "resource_server",
    ]
    unchanged = api.call("PATCH", path, admin.token, {"client_name": None, "scope": "api reports"})
    assert unchanged.json() == updated
    assert len(audit_events(services, "client.updated")) == 1


@pytest.mark.parametrize(
    "patch",
    [
        {"redirect_uris": ["javascript:alert(1)"]},
        {"redirect_uris": []},
        {"grant_types": []},
        {"grant_types": ["password"]},
        {"post_logout_redirect_uris": ["https://x.example.com/#f"]},
        {"client_name": " "},
        {"client_name": "a\nb"},
        {"is_active": "false"},
        {"token_endpoint_auth_method": "none"},
        {"secret_digest": "0" * 64},
        {"id": "other"},
        {"client_id": "other"},
        {"dynamically_registered": True},
        {"response_types": ["token"]},
    ],
)
def test_update_validates_like_create(
    api: Api, admin: Person, services: Services, patch: dict[str, Any]
) -> None:
    """Same rules as registration; unknown or read-only members are refused (J77)."""
    created = create(api, admin)
    before = all_clients(services)
    response = api.call("PATCH", f"{CLIENTS}/{created['client_id']}", admin.token, patch)
    assert is_problem(response, 400), response.text
    assert all_clients(services) == before


def test_a_public_client_cannot_gain_client_credentials_or_introspection(
    api: Api, admin: Person
) -> None:
    created = create(
        api,
        admin,
        redirect_uris=["http://127.0.0.1/cb"],
        grant_types=["authorization_code"],
        token_endpoint_auth_method="none",
    )
    path = f"{CLIENTS}/{created['client_id']}"
    for patch in (
        {"grant_types": ["authorization_code", "client_credentials"]},
        {"resource_server": True},
    ):
        assert is_problem(api.call("PATCH", path, admin.token, patch), 400)
    assert api.call("GET", path, admin.token).json() == created


def test_deactivating_stops_its_tokens_at_once(
    api: Api, admin: Person, make: factories.Factory, tokens: factories.TokenFactory
) -> None:
    """A disabled client's tokens stop working by reference, on the next request."""
    user = make.user()
    client, secret = make.client(
        grant_types=["authorization_code", "client_credentials"], scope="openid users:read api"
    )
    issued = tokens.access_token(user, "users:read", client=client)
    assert api.call("GET", "/api/v1/users/me", issued.token).status_code == 200
    off = api.call("PATCH", f"{CLIENTS}/{client.id}", admin.token, {"is_active": False})
    assert off.json()["is_active"] is False
    assert api.call("GET", "/api/v1/users/me", issued.token).status_code == 401
    assert secret is not None
    assert client_credentials(api.client, client.id, secret).status_code == 401


def test_delete_revokes_everything_issued_to_it(
    api: Api,
    admin: Person,
    make: factories.Factory,
    tokens: factories.TokenFactory,
    services: Services,
) -> None:
    user = make.user()
    client, secret = make.client(
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
        scope="openid users:read api",
    )
    issued = tokens.access_token(user, "users:read", client=client, offline=True)
    assert api.call("GET", "/api/v1/users/me", issued.token).status_code == 200
    response = api.call("DELETE", f"{CLIENTS}/{client.id}", admin.token)
    assert response.status_code == 204
    assert stored(services, client.id) is None
    assert api.call("GET", "/api/v1/users/me", issued.token).status_code == 401
    assert secret is not None
    assert client_credentials(api.client, client.id, secret).status_code == 401
    assert is_problem(api.call("GET", f"{CLIENTS}/{client.id}", admin.token), 404)
    from authserver.db import current_session
    from authserver.oauth.tokens import AccessToken, TokenFamily

    def left() -> tuple[Any, Any]:
        session = current_session()
        return session.get(TokenFamily, issued.family_id), session.get(AccessToken, issued.jti)

    assert services.db.call(left) == (None, None)
    assert [e.event for e in audit_events(services, prefix="client.")] == ["client.deleted"]


def test_rotation_replaces_the_secret(api: Api, admin: Person, services: Services) -> None:
    created = create(api, admin)
    client_id, old = created["client_id"], created["client_secret"]
    response = api.call("POST", f"{CLIENTS}/{client_id}/secret", admin.token)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    new = response.json()["client_secret"]
    assert response.json() == {"client_id": client_id, "client_secret": new}
    assert new != old
    row = stored(services, client_id)
    assert row is not None
    assert row.secret_digest is not None
    assert not services.digester.matches(clients.SECRET_PURPOSE, old, row.secret_digest)
    assert services.digester.matches(clients.SECRET_PURPOSE, new, row.secret_digest)
    assert client_credentials(api.client, client_id, old).status_code == 401
    assert client_credentials(api.client, client_id, new).status_code == 200
    [event] = audit_events(services, "client.secret_rotated")
    assert old not in str(event.details)
    assert new not in str(event.details)
    assert row.secret_digest not in str(event.details)


def test_a_client_without_a_secret_has_none_to_rotate(api: Api, admin: Person) -> None:
    created = create(
        api,
        admin,
        redirect_uris=["http://127.0.0.1/cb"],
        grant_types=["authorization_code"],
        token_endpoint_auth_method="none",
    )
    response = api.call("POST", f"{CLIENTS}/{created['client_id']}/secret", admin.token)
    assert is_problem(response, 409)


# -- who may call ---------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "", None),
    ("POST", "", NEW),
    ("GET", "/{id}", None),
    ("PATCH", "/{id}", {"client_name": "Renamed"}),
    ("DELETE", "/{id}", None),
    ("POST", "/{id}/secret", None),
]
IDS = [f"{method} /clients{path}" for method, path, _ in ENDPOINTS]


@pytest.fixture
def target(make: factories.Factory) -> str:
    return make.client(name="Target")[0].id


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_an_administrator_succeeds(
    api: Api, admin: Person, target: str, method: str, path: str, body: Any
) -> None:
    response = api.call(method, CLIENTS + path.format(id=target), admin.token, body)
    assert response.is_success, response.text


@pytest.mark.parametrize(
    "variant",
    ["none", "id_token", "other_audience", "expired", "no_admin_scope", "not_admin", "demoted"],
)
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_everyone_else_is_refused(
    api: Api,
    admin: Person,
    target: str,
    make: factories.Factory,
    tokens: factories.TokenFactory,
    services: Services,
    variant: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    """J74: no token → 401; an ID token, another audience or an expired token → 401
    `invalid_token`; without `admin` → 403 `insufficient_scope`; an `admin` token whose
    person is not (or no longer, J78) an administrator → 403. Nothing changes."""
    status, token = 401, None
    if variant in ("id_token", "other_audience", "expired"):
        kwargs = {
            "id_token": {"typ": "JWT"},
            "other_audience": {"audience": "https://other.example.com/api"},
            "expired": {"ttl": -30},
        }[variant]
        token = tokens.access_token(admin.user, "admin", **kwargs).token
    elif variant == "no_admin_scope":
        status, token = 403, tokens.access_token(admin.user, "users:read users:write").token
    elif variant == "not_admin":
        status, token = 403, tokens.access_token(make.user(), "admin").token
    elif variant == "demoted":
        make.user(email="other-root@example.com", is_admin=True)
        status, token = 403, admin.token
        services.db.call(_demote, admin.user.id)
    before = all_clients(services)
    response = api.call(method, CLIENTS + path.format(id=target), token, body)
    assert is_problem(response, status), response.text
    if variant == "no_admin_scope":
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    if variant in ("id_token", "other_audience", "expired"):
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert all_clients(services) == before


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_a_client_alone_is_refused_even_with_admin(
    api: Api,
    target: str,
    tokens: factories.TokenFactory,
    services: Services,
    method: str,
    path: str,
    body: Any,
) -> None:
    """J74/J78: a client_credentials token claiming `admin` that its client is not
    registered for speaks for no administrator."""
    unregistered, _ = tokens.factory.client(
        grant_types=["client_credentials"], redirect_uris=[], scope="users:read"
    )
    token = tokens.access_token(None, "admin", client=unregistered).token
    before = all_clients(services)
    response = api.call(method, CLIENTS + path.format(id=target), token, body)
    assert is_problem(response, 403)
    assert all_clients(services) == before


def test_the_document_describes_the_operations(client: TestClient) -> None:
    document = client.get("/api/v1/openapi.json").json()
    paths = document["paths"]
    assert set(paths[CLIENTS]) == {"get", "post"}
    assert set(paths[CLIENTS + "/{client_id}"]) == {"get", "patch", "delete"}
    assert set(paths[CLIENTS + "/{client_id}/secret"]) == {"post"}
    created = paths[CLIENTS]["post"]["responses"]["201"]["content"]["application/json"]
    assert "client_secret" in created["schema"]["properties"]
    read = paths[CLIENTS + "/{client_id}"]["get"]["responses"]["200"]["content"]
    assert "client_secret" not in read["application/json"]["schema"]["properties"]


def _demote(user_id: str) -> None:
    from authserver.users import models as users

    user = users.get(user_id)
    assert user is not None
    user.is_admin = False


JWKS_URI = "https://keys.print.example.com/jwks.json"
PUBLIC_JWK = {
    "kty": "EC",
    "crv": "P-256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
    "kid": "k1",
}


@pytest.mark.parametrize(
    ("keys", "status"),
    [
        ({"jwks_uri": JWKS_URI}, 201),
        ({"jwks": {"keys": [PUBLIC_JWK]}}, 201),
        ({"jwks_uri": JWKS_URI, "jwks": {"keys": [PUBLIC_JWK]}}, 400),
        (
            {
                "jwks": {
                    "keys": [{**PUBLIC_JWK, "d": "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}]
                }
            },
            400,
        ),
        ({"jwks_uri": "http://keys.print.example.com/jwks.json"}, 400),
        ({}, 400),
    ],
)
def test_private_key_jwt_clients_register_their_public_keys(
    api: Api, admin: Person, keys: dict[str, Any], status: int
) -> None:
    body = {**NEW, "token_endpoint_auth_method": "private_key_jwt", **keys}
    response = api.call("POST", CLIENTS, admin.token, body)
    assert response.status_code == status, response.text
    if status == 201:
        created = response.json()
        assert "client_secret" not in created
        assert created["token_endpoint_auth_method"] == "private_key_jwt"
        assert {k: created[k] for k in keys} == keys
    else:
        assert is_problem(response, 400)


def test_the_issue_14_client_settings(api: Api, admin: Person) -> None:
    """The device grant, the PAR requirement (RFC 9126 §6) and signed introspection
    (RFC 9701) are registered, read back and changed through the admin API."""
    device_grant = clients.DEVICE_CODE
    created = create(
        api,
        admin,
        grant_types=["authorization_code", device_grant],
        require_pushed_authorization_requests=True,
        introspection_signed_response_alg="RS256",
    )
    assert created["grant_types"] == ["authorization_code", device_grant]
    assert created["require_pushed_authorization_requests"] is True
    assert created["introspection_signed_response_alg"] == "RS256"
    path = f"{CLIENTS}/{created['client_id']}"
    patch = {"require_pushed_authorization_requests": False}
    changed = api.call("PATCH", path, admin.token, patch)
    assert changed.status_code == 200, changed.text
    assert changed.json()["require_pushed_authorization_requests"] is False
    bad = api.call("PATCH", path, admin.token, {"introspection_signed_response_alg": "none"})
    assert is_problem(bad, 400), bad.text
