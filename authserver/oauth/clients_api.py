"""`/api/v1/clients`: the administrators' CRUD of OAuth clients and secret rotation.

Every operation needs the `admin` scope. A client secret leaves the server exactly twice,
in the answer to its creation and to its rotation (with `Cache-Control: no-store`); only its
keyed digest is stored, and no answer ever carries the digest. Registration data is
validated by `clients`, the same code the CLI uses, and every change is audited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import audit, rest
from authserver.errors import Invalid, NotFound
from authserver.oauth import clients
from authserver.oauth.clients import Client

ADMIN = ("admin",)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
LISTING = "clients"


@dataclass
class NewClient:
    client_name: str
    redirect_uris: list[str] = field(default_factory=list)
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    grant_types: list[str] = field(default_factory=list)
    scope: str = clients.DEFAULT_SCOPE
    token_endpoint_auth_method: str = "client_secret_basic"
    skip_consent: bool = False


@dataclass
class ClientPatch:
    """Members left out, or null, stay as they are."""

    client_name: str | None = None
    redirect_uris: list[str] | None = None
    post_logout_redirect_uris: list[str] | None = None
    grant_types: list[str] | None = None
    scope: str | None = None
    skip_consent: bool | None = None
    is_active: bool | None = None


@dataclass(frozen=True)
class Admin:
    """The administrator making a change, as the audit trail records it."""

    principal: rest.Principal
    ip: str

    def record(self, event: str, client_id: str, **details: Any) -> None:
        audit.record(
            event,
            actor_type="user" if self.principal.user_id else "client",
            actor_id=self.principal.user_id or self.principal.client_id,
            ip=self.ip,
            target_type="client",
            target_id=client_id,
            via_client=self.principal.client_id,
            **details,
        )


async def _admin(request: Request) -> Admin:
    principal = await rest.authenticate(request, ADMIN)
    return Admin(principal, request.client.host if request.client else "")


def _services(request: Request) -> Any:
    return request.app.state.services


def _cursors(request: Request) -> rest.Cursors:
    return rest.Cursors(_services(request).digester.key("cursor"))


def _existing(client_id: str) -> Client:
    client = clients.get(client_id) if len(client_id) <= 64 else None
    if client is None:
        raise NotFound("No such client.")
    return client


def _after(request: Request) -> tuple[datetime, str] | None:
    """The position a cursor of this listing points at; a cursor of another listing is
    refused, never reinterpreted."""
    position = _cursors(request).decode(request.query_params.get("cursor"))
    if position is None:
        return None
    if len(position) != 3 or position[0] != LISTING:
        raise Invalid("The cursor does not belong to this listing.")
    try:
        return datetime.fromisoformat(position[1]), position[2]
    except ValueError:
        raise Invalid("The cursor is not valid.") from None


async def list_clients(request: Request) -> Response:
    await _admin(request)
    size = rest.page_size(request)
    after = _after(request)
    found = await _services(request).db.run_sync(clients.listing, after=after, limit=size + 1)
    cursor = None
    if len(found) > size:
        found = found[:size]
        last = found[-1]
        cursor = _cursors(request).encode([LISTING, last.created_at.isoformat(), last.id])
    return rest.page([clients.as_dict(client) for client in found], cursor)


async def create_client(request: Request) -> Response:
    admin = await _admin(request)
    body: NewClient = await rest.read_json(request, NewClient)
    services = _services(request)

    def create() -> dict[str, Any]:
        client, secret = clients.create(
            services.digester,
            name=body.client_name,
            redirect_uris=body.redirect_uris,
            grant_types=body.grant_types,
            scope=body.scope,
            auth_method=body.token_endpoint_auth_method,
            post_logout_redirect_uris=body.post_logout_redirect_uris,
            skip_consent=body.skip_consent,
        )
        admin.record("client.created", client.id)
        created = clients.as_dict(client)
        if secret is not None:
            created["client_secret"] = secret
        return created

    created = await services.db.run_sync(create)
    location = f"{rest.API_PREFIX}/clients/{created['client_id']}"
    return JSONResponse(created, 201, headers={**NO_STORE, "Location": location})


async def get_client(request: Request) -> Response:
    await _admin(request)
    client_id = request.path_params["client_id"]

    def read() -> dict[str, Any]:
        return clients.as_dict(_existing(client_id))

    return JSONResponse(await _services(request).db.run_sync(read))


async def update_client(request: Request) -> Response:
    admin = await _admin(request)
    client_id = request.path_params["client_id"]
    body: ClientPatch = await rest.read_json(request, ClientPatch)

    def update() -> dict[str, Any]:
        client = _existing(client_id)
        changed = clients.update(
            client,
            name=body.client_name,
            redirect_uris=body.redirect_uris,
            post_logout_redirect_uris=body.post_logout_redirect_uris,
            grant_types=body.grant_types,
            scope=body.scope,
            skip_consent=body.skip_consent,
            is_active=body.is_active,
        )
        if changed:
            admin.record("client.updated", client_id, fields=changed)
        return clients.as_dict(client)

    return JSONResponse(await _services(request).db.run_sync(update))


async def delete_client(request: Request) -> Response:
    admin = await _admin(request)
    client_id = request.path_params["client_id"]

    def delete() -> None:
        clients.delete(_existing(client_id))
        admin.record("client.deleted", client_id)

    await _services(request).db.run_sync(delete)
    return Response(status_code=204)


async def rotate_client_secret(request: Request) -> Response:
    admin = await _admin(request)
    client_id = request.path_params["client_id"]
    services = _services(request)

    def rotate() -> dict[str, Any]:
        secret = clients.rotate_secret(services.digester, _existing(client_id))
        admin.record("client.secret_rotated", client_id)
        return {"client_id": client_id, "client_secret": secret}

    return JSONResponse(await services.db.run_sync(rotate), headers=NO_STORE)


# -- OpenAPI --------------------------------------------------------------------------------

URIS = {"type": "array", "items": {"type": "string"}}
GRANT_TYPES = {"type": "array", "items": {"type": "string", "enum": list(clients.GRANT_TYPES)}}
NAME = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}
CLIENT = {
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
        "is_active",
        "created_at",
    ],
    "properties": {
        "client_id": {"type": "string"},
        "client_name": {"type": "string"},
        "redirect_uris": URIS,
        "post_logout_redirect_uris": URIS,
        "grant_types": {"type": "array", "items": {"type": "string"}},
        "response_types": {"type": "array", "items": {"type": "string"}},
        "scope": {"type": "string"},
        "token_endpoint_auth_method": {"type": "string"},
        "skip_consent": {"type": "boolean"},
        "is_active": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
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
        "scope": {"type": "string"},
        "token_endpoint_auth_method": {"type": "string", "enum": list(clients.AUTH_METHODS)},
        "skip_consent": {"type": "boolean"},
    },
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
        "scope": {"type": ["string", "null"]},
        "skip_consent": {"type": ["boolean", "null"]},
        "is_active": {"type": ["boolean", "null"]},
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
        query={
            "page_size": {"type": "integer", "minimum": 1, "maximum": rest.MAX_PAGE_SIZE},
            "cursor": {"type": "string"},
        },
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
