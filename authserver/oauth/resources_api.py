"""`/api/v1/resources`: the administrators' registry of protected resources (RFC 8707).

Every operation needs the `admin` scope, as `/api/v1/clients` does; registration data is
validated by `resources`, the same code the CLI uses, and every change is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import rest
from authserver.actors import ADMIN, admin, as_admin
from authserver.errors import NotFound
from authserver.oauth import resources
from authserver.oauth.clients_api import NAME
from authserver.oauth.resources import Resource
from authserver.services import services


@dataclass
class NewResource:
    uri: str
    scopes: list[str]
    name: str | None = None
    client_id: str | None = None


def _existing(resource_id: str) -> Resource:
    resource = resources.get(resource_id)
    if resource is None:
        raise NotFound("No such resource.")
    return resource


async def list_resources(request: Request) -> Response:
    me = await admin(request)
    listing = rest.Listing(request, "resources")

    def read() -> list[Resource]:
        return resources.listing(after=listing.after, limit=listing.limit)

    rows = await as_admin(request, me, read)
    return listing.page(rows, lambda row: (row.created_at, row.id), resources.as_dict)


async def create_resource(request: Request) -> Response:
    me = await admin(request)
    body: NewResource = await rest.read_json(request, NewResource)
    settings = services(request).settings

    def create() -> dict[str, Any]:
        resource = resources.create(
            settings, uri=body.uri, scopes=body.scopes, name=body.name, client_id=body.client_id
        )
        me.record("resource.created", "resource", resource.id)
        return resources.as_dict(resource)

    created = await as_admin(request, me, create)
    return rest.created(created, f"/resources/{created['id']}")


async def get_resource(request: Request) -> Response:
    me = await admin(request)
    resource_id = rest.path_id(request, "resource_id")

    def read() -> dict[str, Any]:
        return resources.as_dict(_existing(resource_id))

    return JSONResponse(await as_admin(request, me, read))


async def delete_resource(request: Request) -> Response:
    me = await admin(request)
    resource_id = rest.path_id(request, "resource_id")

    def delete() -> None:
        resources.delete(_existing(resource_id))
        me.record("resource.deleted", "resource", resource_id)

    await as_admin(request, me, delete)
    return Response(status_code=204)


# -- OpenAPI --------------------------------------------------------------------------------

URI = {
    "type": "string",
    "maxLength": resources.URI_MAX,
    "description": "The resource indicator clients send (RFC 8707): https, or http on "
    "loopback; no user info, query or fragment.",
    "pattern": r"^(https://[^/?#@\s]+|http://(127\.0\.0\.1|\[::1\]|localhost)(:[0-9]{1,5})?)"
    r"(/[^?#\s]*)?$",
}
SCOPES = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "string", "pattern": r"^[\x21\x23-\x5b\x5d-\x7e]{1,100}$"},
    "description": "The scopes it accepts; not openid, profile, email or offline_access.",
}
RESOURCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "uri", "name", "scopes", "client_id", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "uri": {"type": "string"},
        "name": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "client_id": {
            "type": ["string", "null"],
            "description": "The resource-server client that may introspect its tokens.",
        },
        "created_at": rest.TIMESTAMP,
    },
}
NEW_RESOURCE = rest.body_schema(
    {
        "uri": URI,
        "scopes": SCOPES,
        "name": {**NAME, "type": ["string", "null"]},
        "client_id": {"type": ["string", "null"], "maxLength": 64},
    },
    ["uri", "scopes"],
)
RESOURCE_PATH = "/resources/{resource_id}"

OPERATIONS = [
    rest.Operation(
        "GET",
        "/resources",
        list_resources,
        "List protected resources (admin)",
        ADMIN,
        response=rest.list_schema(RESOURCE),
        query=rest.PAGINATION,
        errors=(400, 401, 403),
    ),
    rest.Operation(
        "POST",
        "/resources",
        create_resource,
        "Register a protected resource (admin)",
        ADMIN,
        response=RESOURCE,
        status=201,
        request=NEW_RESOURCE,
        errors=(400, 401, 403, 409),
    ),
    rest.Operation(
        "GET",
        RESOURCE_PATH,
        get_resource,
        "Read a protected resource (admin)",
        ADMIN,
        response=RESOURCE,
    ),
    rest.Operation(
        "DELETE",
        RESOURCE_PATH,
        delete_resource,
        "Delete a protected resource (admin)",
        ADMIN,
        status=204,
    ),
]
