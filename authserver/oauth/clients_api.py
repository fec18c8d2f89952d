"""`/api/v1/clients`: the administrators' CRUD of OAuth clients and secret rotation.

Every operation needs the `admin` scope: an administrator's token (the person is read again
in each request's transaction, so a demoted administrator stops at once, docs/security.md J78) or
the token of a client an operator registered with `admin`, for automation.
A client secret leaves the server exactly twice,
in the answer to its creation and to its rotation (with `Cache-Control: no-store`); only its
keyed digest is stored, and no answer ever carries the digest. Registration data is
validated by `clients`, the same code the CLI uses, and every change is audited.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import rest
from authserver.actors import ADMIN, admin, as_admin
from authserver.errors import NO_STORE, Invalid, NotFound
from authserver.keystore import ALGORITHMS
from authserver.oauth import backchannel, clients, token_exchange
from authserver.oauth.clients import Client
from authserver.services import services

SCOPE_MAX = 1000


@dataclass
class NewClient:
    client_name: str
    redirect_uris: list[str] = field(default_factory=list)
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    grant_types: list[str] = field(default_factory=list)
    scope: str = clients.DEFAULT_SCOPE
    token_endpoint_auth_method: str = "client_secret_basic"
    skip_consent: bool = False
    resource_server: bool = False
    jwks: dict | None = None  # type: ignore[type-arg]  # rest.read_json checks isinstance
    jwks_uri: str | None = None
    require_pushed_authorization_requests: bool = False
    introspection_signed_response_alg: str | None = None
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool = False
    token_exchange_audiences: list[str] = field(default_factory=list)


@dataclass
class ClientPatch:
    """Members left out, or null, stay as they are."""

    client_name: str | None = None
    redirect_uris: list[str] | None = None
    post_logout_redirect_uris: list[str] | None = None
    grant_types: list[str] | None = None
    scope: str | None = None
    skip_consent: bool | None = None
    resource_server: bool | None = None
    is_active: bool | None = None
    require_pushed_authorization_requests: bool | None = None
    introspection_signed_response_alg: str | None = None
    #: "" removes the registration.
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool | None = None
    token_exchange_audiences: list[str] | None = None


def _existing(client_id: str) -> Client:
    client = clients.get(client_id)
    if client is None:
        raise NotFound("No such client.")
    return client


async def list_clients(request: Request) -> Response:
    me = await admin(request)
    listing = rest.Listing(request, "clients")

    def read() -> list[Client]:
        return clients.listing(after=listing.after, limit=listing.limit)

    rows = await as_admin(request, me, read)
    return listing.page(rows, lambda client: (client.created_at, client.id), clients.as_dict)


async def create_client(request: Request) -> Response:
    me = await admin(request)
    body: NewClient = await rest.read_json(request, NewClient)
    _check_text(body.client_name, body.scope)
    service = services(request)
    digester, fetcher, settings = service.digester, service.fetcher, service.settings

    def create() -> dict[str, Any]:
        token_exchange.check_policy(settings, body.token_exchange_audiences)
        client, secret = clients.create(
            digester,
            name=body.client_name,
            redirect_uris=body.redirect_uris,
            grant_types=body.grant_types,
            scope=body.scope,
            auth_method=body.token_endpoint_auth_method,
            post_logout_redirect_uris=body.post_logout_redirect_uris,
            skip_consent=body.skip_consent,
            resource_server=body.resource_server,
            jwks=body.jwks,
            jwks_uri=body.jwks_uri,
            require_pushed_authorization_requests=body.require_pushed_authorization_requests,
            introspection_signed_response_alg=body.introspection_signed_response_alg,
            token_exchange_audiences=body.token_exchange_audiences,
        )
        backchannel.register(
            client,
            fetcher,
            body.backchannel_logout_uri,
            body.backchannel_logout_session_required,
        )
        me.record("client.created", "client", client.id)
        created = clients.as_dict(client)
        if secret is not None:
            created["client_secret"] = secret
        return created

    created = await as_admin(request, me, create)
    return rest.created(created, f"/clients/{created['client_id']}", headers=NO_STORE)


async def get_client(request: Request) -> Response:
    me = await admin(request)
    client_id = rest.path_id(request, "client_id")

    def read() -> dict[str, Any]:
        return clients.as_dict(_existing(client_id))

    return JSONResponse(await as_admin(request, me, read))


async def update_client(request: Request) -> Response:
    me = await admin(request)
    client_id = rest.path_id(request, "client_id")
    body: ClientPatch = await rest.read_json(request, ClientPatch)
    _check_text(body.client_name, body.scope)
    fetcher, settings = services(request).fetcher, services(request).settings

    def update() -> dict[str, Any]:
        client = _existing(client_id)
        token_exchange.check_policy(settings, body.token_exchange_audiences)
        before = clients.backchannel_logout(client)
        changed = clients.update(
            client,
            name=body.client_name,
            redirect_uris=body.redirect_uris,
            post_logout_redirect_uris=body.post_logout_redirect_uris,
            grant_types=body.grant_types,
            scope=body.scope,
            skip_consent=body.skip_consent,
            resource_server=body.resource_server,
            is_active=body.is_active,
            require_pushed_authorization_requests=body.require_pushed_authorization_requests,
            introspection_signed_response_alg=body.introspection_signed_response_alg,
            token_exchange_audiences=body.token_exchange_audiences,
        )
        uri, required = body.backchannel_logout_uri, body.backchannel_logout_session_required
        if uri is None and required is not None:
            uri = before.get(clients.BACKCHANNEL_URI, "")
        if required is None:
            required = bool(uri) and bool(before.get(clients.BACKCHANNEL_SESSION_REQUIRED))
        backchannel.register(client, fetcher, uri, required)
        if clients.backchannel_logout(client) != before:
            changed.append(clients.BACKCHANNEL_URI)
        if changed:
            me.record("client.updated", "client", client_id, fields=changed)
        return clients.as_dict(client)

    return JSONResponse(await as_admin(request, me, update))


async def delete_client(request: Request) -> Response:
    me = await admin(request)
    client_id = rest.path_id(request, "client_id")

    def delete() -> None:
        clients.delete(_existing(client_id))
        me.record("client.deleted", "client", client_id)

    await as_admin(request, me, delete)
    return Response(status_code=204)


async def rotate_client_secret(request: Request) -> Response:
    me = await admin(request)
    client_id = rest.path_id(request, "client_id")
    digester = services(request).digester

    def rotate() -> dict[str, Any]:
        secret = clients.rotate_secret(digester, _existing(client_id))
        me.record("client.secret_rotated", "client", client_id)
        return {"client_id": client_id, "client_secret": secret}

    return JSONResponse(await as_admin(request, me, rotate), headers=NO_STORE)


def _check_text(client_name: str | None, scope: str | None) -> None:
    """Names and scopes are shown to people and compared as text: no control characters
    or lone surrogates, and a scope that fits its column (PostgreSQL would answer either
    with an error rather than a 400)."""
    for name, value in (("client_name", client_name), ("scope", scope)):
        if value is not None and any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
            raise Invalid(f"`{name}` must not contain control characters.")
    if scope is not None and len(scope) > SCOPE_MAX:
        raise Invalid(f"`scope` must be at most {SCOPE_MAX} characters.")


# -- OpenAPI --------------------------------------------------------------------------------

NAME = rest.name_schema(200)
SCOPE = {"type": "string", "maxLength": SCOPE_MAX, "pattern": rf"^{rest.PRINTABLE}*$"}
_REST = r"(/[A-Za-z0-9._~!$&'()+,;=:@%/-]*)?(\?[A-Za-z0-9._~!$&'()+,;=:@%/?-]*)?"
_PORT = "(:[0-9]{1,5})"
REDIRECT_URI = {
    "type": "string",
    "maxLength": 2000,
    "description": "Compared exactly. https; http only on loopback (any port, RFC 8252 §7.3); "
    "or a private-use scheme named as a reversed domain (RFC 8252 §7.1). No fragment, "
    "wildcard or user info.",
    "pattern": "^("
    + "|".join(
        (
            rf"https://[A-Za-z0-9.-]+{_PORT}?{_REST}",
            rf"http://(127\.0\.0\.1{_PORT}?|\[::1\]{_PORT}){_REST}",
            r"[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+:[A-Za-z0-9._~!$&'()+,;=:@%/?-]*",
        )
    )
    + ")$",
}
URIS = {"type": "array", "items": REDIRECT_URI}
GRANT_TYPES = {"type": "array", "items": {"type": "string", "enum": list(clients.GRANT_TYPES)}}
RESOURCE_SERVER = {
    "type": "boolean",
    "description": "May introspect access tokens issued to any client (needs a secret).",
}
REQUIRE_PAR = {
    "type": "boolean",
    "description": "Every authorization request must be pushed to /par first (RFC 9126).",
}
INTROSPECTION_ALG = {
    "type": "string",
    "enum": list(ALGORITHMS),
    "description": "Signed introspection answers (RFC 9701) with this algorithm.",
}
EXCHANGE_AUDIENCES = {
    "type": "array",
    "maxItems": clients.EXCHANGE_AUDIENCES_MAX,
    "items": {"type": "string", "maxLength": 2000},
    "description": "Token exchange (RFC 8693): the registered resources this client may "
    "exchange a person's access token for. Empty: it may not exchange; needs a client "
    "that authenticates.",
}
JWKS: dict[str, Any] = {
    "type": "object",
    "description": "private_key_jwt: the client's public keys (RFC 7517); no private members.",
    "required": ["keys"],
    "properties": {"keys": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
}
JWKS_URI: dict[str, Any] = {
    "type": "string",
    "format": "uri",
    "pattern": "^https://",
    "description": "private_key_jwt: https URL of the client's public keys.",
}
BACKCHANNEL_URI: dict[str, Any] = {
    "type": "string",
    "maxLength": 2000,
    "description": "OIDC Back-Channel Logout: where a signed logout token is POSTed when a "
    "session the client holds tokens from ends. https; plain http only for a loopback host "
    "the operator trusts (AUTHSERVER_TRUSTED_HOSTS); no fragment.",
}
BACKCHANNEL_SESSION: dict[str, Any] = {
    "type": "boolean",
    "description": "The client needs `sid` in logout tokens (this server always sends it).",
}
CLIENT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "client_id",
        "client_name",
        "redirect_uris",
        "post_logout_redirect_uris",
        "grant_types",
        "response_types",
        "scope",
        "token_endpoint_auth_method",
        "skip_consent",
        "resource_server",
        "is_active",
        "created_at",
    ],
    "properties": {
        "client_id": {"type": "string"},
        "client_name": {"type": "string"},
        "redirect_uris": {"type": "array", "items": {"type": "string"}},
        "post_logout_redirect_uris": {"type": "array", "items": {"type": "string"}},
        "grant_types": {"type": "array", "items": {"type": "string"}},
        "response_types": {"type": "array", "items": {"type": "string"}},
        "scope": {"type": "string"},
        "token_endpoint_auth_method": {"type": "string"},
        "skip_consent": {"type": "boolean"},
        "resource_server": RESOURCE_SERVER,
        "is_active": {"type": "boolean"},
        "require_pushed_authorization_requests": REQUIRE_PAR,
        "introspection_signed_response_alg": INTROSPECTION_ALG,
        "token_exchange_audiences": EXCHANGE_AUDIENCES,
        "created_at": rest.TIMESTAMP,
        "jwks": JWKS,
        "jwks_uri": JWKS_URI,
        "backchannel_logout_uri": BACKCHANNEL_URI,
        "backchannel_logout_session_required": BACKCHANNEL_SESSION,
    },
}
CREATED_CLIENT = {
    **CLIENT,
    "properties": {
        **CLIENT["properties"],
        "client_secret": {
            "description": "Shown only here; absent for clients without a secret.",
            "type": "string",
        },
    },
}
NEW_CLIENT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["client_name"],
    "properties": {
        "client_name": NAME,
        "redirect_uris": URIS,
        "post_logout_redirect_uris": URIS,
        "grant_types": {
            **GRANT_TYPES,
            "description": "Empty or left out: authorization_code and refresh_token.",
        },
        "scope": SCOPE,
        "token_endpoint_auth_method": {"type": "string", "enum": list(clients.AUTH_METHODS)},
        "skip_consent": {"type": "boolean"},
        "resource_server": RESOURCE_SERVER,
        "require_pushed_authorization_requests": REQUIRE_PAR,
        "introspection_signed_response_alg": INTROSPECTION_ALG,
        "token_exchange_audiences": EXCHANGE_AUDIENCES,
        "jwks": JWKS,
        "jwks_uri": JWKS_URI,
        "backchannel_logout_uri": BACKCHANNEL_URI,
        "backchannel_logout_session_required": BACKCHANNEL_SESSION,
    },
    "not": {"required": ["jwks", "jwks_uri"]},
    "allOf": [
        {
            "description": "authorization_code (also the default) needs a redirect URI.",
            "if": {
                "anyOf": [
                    {"not": {"required": ["grant_types"]}},
                    {"properties": {"grant_types": {"maxItems": 0}}},
                    {"properties": {"grant_types": {"contains": {"const": "authorization_code"}}}},
                ]
            },
            "then": {
                "required": ["redirect_uris"],
                "properties": {"redirect_uris": {"minItems": 1}},
            },
        },
        {
            "description": "A public client (auth method none) cannot use client_credentials "
            "or be a resource server.",
            "if": {
                "required": ["token_endpoint_auth_method"],
                "properties": {"token_endpoint_auth_method": {"const": "none"}},
            },
            "then": {
                "properties": {
                    "grant_types": {"not": {"contains": {"const": "client_credentials"}}},
                    "resource_server": {"const": False},
                }
            },
        },
    ],
}
CLIENT_PATCH = {
    "type": "object",
    "additionalProperties": False,
    "description": "Members left out, or null, stay as they are.",
    "properties": {
        "client_name": {**NAME, "type": ["string", "null"]},
        "redirect_uris": {**URIS, "type": ["array", "null"]},
        "post_logout_redirect_uris": {**URIS, "type": ["array", "null"]},
        "grant_types": {**GRANT_TYPES, "type": ["array", "null"], "minItems": 1},
        "scope": {**SCOPE, "type": ["string", "null"]},
        "skip_consent": {"type": ["boolean", "null"]},
        "resource_server": {**RESOURCE_SERVER, "type": ["boolean", "null"]},
        "is_active": {"type": ["boolean", "null"]},
        "require_pushed_authorization_requests": {**REQUIRE_PAR, "type": ["boolean", "null"]},
        "introspection_signed_response_alg": {
            **INTROSPECTION_ALG,
            "type": ["string", "null"],
            "enum": [*ALGORITHMS, None],
        },
        "backchannel_logout_uri": {
            **BACKCHANNEL_URI,
            "type": ["string", "null"],
            "description": '"" removes the registration. ' + BACKCHANNEL_URI["description"],
        },
        "backchannel_logout_session_required": {**BACKCHANNEL_SESSION, "type": ["boolean", "null"]},
        "token_exchange_audiences": {**EXCHANGE_AUDIENCES, "type": ["array", "null"]},
    },
}
SECRET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["client_id", "client_secret"],
    "properties": {"client_id": {"type": "string"}, "client_secret": {"type": "string"}},
}
CLIENT_PATH = "/clients/{client_id}"

OPERATIONS = [
    rest.Operation(
        "GET",
        "/clients",
        list_clients,
        "List clients (admin)",
        ADMIN,
        response=rest.list_schema(CLIENT),
        query=rest.PAGINATION,
        errors=(400, 401, 403),
    ),
    rest.Operation(
        "POST",
        "/clients",
        create_client,
        "Register a client; its secret is in this answer only (admin)",
        ADMIN,
        response=CREATED_CLIENT,
        status=201,
        request=NEW_CLIENT,
        errors=(400, 401, 403),
    ),
    rest.Operation("GET", CLIENT_PATH, get_client, "Read a client (admin)", ADMIN, response=CLIENT),
    rest.Operation(
        "PATCH",
        CLIENT_PATH,
        update_client,
        "Change a client's registration (admin)",
        ADMIN,
        response=CLIENT,
        request=CLIENT_PATCH,
    ),
    rest.Operation(
        "DELETE",
        CLIENT_PATH,
        delete_client,
        "Delete a client and everything issued to it (admin)",
        ADMIN,
        status=204,
    ),
    rest.Operation(
        "POST",
        CLIENT_PATH + "/secret",
        rotate_client_secret,
        "Rotate a client's secret: the new one is in this answer only (admin)",
        ADMIN,
        response=SECRET,
        errors=(400, 401, 403, 404, 409),
    ),
]
