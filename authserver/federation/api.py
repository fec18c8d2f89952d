"""`/api/v1/providers` (admin) and the linked identities of people (`/users/.../identities`).

Provider registration data goes through `providers`, the same code the CLI uses; discovery
(a fetch) runs before the unit of work that stores its result, and every change is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import rest
from authserver.actors import ADMIN, admin, as_admin, caller
from authserver.federation import models, providers
from authserver.federation.providers import Changes
from authserver.services import services
from authserver.users import models as users
from authserver.users.api import READ


@dataclass
class NewProvider:
    kind: str
    name: str
    client_id: str
    client_secret: str
    issuer: str | None = None
    domains: list[str] | None = None
    jit: bool | None = None
    trust_verified_emails: bool | None = None
    organization_id: str | None = None
    default_role: str | None = None
    enabled: bool | None = None
    scopes: str | None = None


def _changes(body: NewProvider) -> Changes:
    """The members a new provider shares with `Changes` (the body of an update)."""
    return Changes(**{name: getattr(body, name) for name in Changes.__dataclass_fields__})


async def list_providers(request: Request) -> Response:
    me = await admin(request)
    listing = rest.Listing(request, "providers")

    def read() -> list[models.IdentityProvider]:
        return providers.listing(after=listing.after, limit=listing.limit)

    rows = await as_admin(request, me, read)
    return listing.page(rows, lambda row: (row.created_at, row.id), providers.as_dict)


async def create_provider(request: Request) -> Response:
    me = await admin(request)
    body: NewProvider = await rest.read_json(request, NewProvider)
    federation = services(request).federation
    endpoints = await run_in_threadpool(
        providers.endpoints_for, federation.upstream.fetcher, body.kind, body.issuer
    )

    def create() -> dict[str, Any]:
        provider = providers.create(federation.box, body.kind, endpoints, _changes(body))
        me.record("provider.created", "provider", provider.id)
        return providers.as_dict(provider)

    created = await as_admin(request, me, create)
    federation.forget()
    return rest.created(created, f"/providers/{created['id']}")


async def get_provider(request: Request) -> Response:
    me = await admin(request)
    provider_id = rest.path_id(request, "provider_id")

    def read() -> dict[str, Any]:
        return providers.as_dict(providers.existing(provider_id))

    return JSONResponse(await as_admin(request, me, read))


async def update_provider(request: Request) -> Response:
    me = await admin(request)
    provider_id = rest.path_id(request, "provider_id")
    body: Changes = await rest.read_json(request, Changes)
    federation = services(request).federation

    def update() -> dict[str, Any]:
        provider = providers.update(federation.box, providers.existing(provider_id), body)
        me.record("provider.updated", "provider", provider.id)
        return providers.as_dict(provider)

    updated = await as_admin(request, me, update)
    federation.forget()
    return JSONResponse(updated)


async def delete_provider(request: Request) -> Response:
    me = await admin(request)
    provider_id = rest.path_id(request, "provider_id")

    def delete() -> None:
        providers.delete(providers.existing(provider_id))
        me.record("provider.deleted", "provider", provider_id)

    await as_admin(request, me, delete)
    services(request).federation.forget()
    return Response(status_code=204)


def _identities(user_id: str) -> dict[str, Any]:
    return {"items": [models.as_dict(i, p) for i, p in models.links_of(user_id)]}


async def my_identities(request: Request) -> Response:
    me = await caller(request, READ)
    return JSONResponse(await rest.run_sync(request, _identities, me.user_id))


async def user_identities(request: Request) -> Response:
    me = await admin(request)
    user_id = rest.path_id(request, "user_id")

    def read() -> dict[str, Any]:
        users.existing(user_id)
        return _identities(user_id)

    return JSONResponse(await as_admin(request, me, read))


async def delete_user_identity(request: Request) -> Response:
    """An administrator unlinks; the last-way-in rule holds for them too (409)."""
    me = await admin(request)
    user_id = rest.path_id(request, "user_id")
    identity_id = rest.path_id(request, "identity_id")

    def delete() -> None:
        users.existing(user_id)
        identity = models.unlink(user_id, identity_id)
        me.record(
            "identity.unlinked", "user", user_id,
            provider_id=identity.provider_id, identity_id=identity.id,
        )  # fmt: skip

    await as_admin(request, me, delete)
    return Response(status_code=204)


# -- OpenAPI --------------------------------------------------------------------------------

_TEXT = {"type": "string", "maxLength": 2000}
_FLAGS = {
    "jit": {"type": ["boolean", "null"], "description": "create accounts just in time"},
    "trust_verified_emails": {
        "type": ["boolean", "null"],
        "description": "link any verified address to the account that has it (not only in "
        "`domains`)",
    },
    "enabled": {"type": ["boolean", "null"]},
}
_SETTABLE: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": providers.NAME_MAX},
    "client_id": {"type": "string", "minLength": 1, "maxLength": providers.CLIENT_ID_MAX},
    "client_secret": {
        "type": "string",
        "minLength": 1,
        "maxLength": providers.SECRET_MAX,
        "description": "stored encrypted; never shown again",
    },
    "domains": {
        "type": ["array", "null"],
        "maxItems": providers.DOMAINS_MAX,
        "items": {"type": "string", "maxLength": 253},
        "description": "email domains the provider is authoritative for",
    },
    **_FLAGS,
    "organization_id": {
        "type": ["string", "null"],
        "description": "the organization its people join (empty string: none)",
    },
    "default_role": {"type": ["string", "null"], "enum": [*providers.ROLES, None]},
    "scopes": {"type": ["string", "null"], "maxLength": 500},
}
PROVIDER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "kind", "name", "client_id", "enabled", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": list(models.KINDS)},
        "name": {"type": "string"},
        "issuer": {"type": ["string", "null"]},
        "client_id": {"type": "string"},
        "authorization_endpoint": {"type": "string"},
        "token_endpoint": {"type": "string"},
        "userinfo_endpoint": {"type": ["string", "null"]},
        "jwks_uri": {"type": ["string", "null"]},
        "scopes": {"type": "string"},
        "domains": {"type": "array", "items": {"type": "string"}},
        "jit": {"type": "boolean"},
        "trust_verified_emails": {"type": "boolean"},
        "organization_id": {"type": ["string", "null"]},
        "default_role": {"type": "string"},
        "enabled": {"type": "boolean"},
        "created_at": rest.TIMESTAMP,
    },
}
NEW_PROVIDER = rest.body_schema(
    {
        "kind": {"type": "string", "enum": list(models.KINDS)},
        "issuer": {**_TEXT, "type": ["string", "null"], "description": "OpenID Connect only"},
        **_SETTABLE,
    },
    ["kind", "name", "client_id", "client_secret"],
)
PROVIDER_CHANGES = rest.body_schema(
    {**_SETTABLE, "name": {**_SETTABLE["name"], "type": ["string", "null"]}}, []
)
IDENTITY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "provider_id", "provider_name", "provider_kind", "subject", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "provider_id": {"type": "string"},
        "provider_name": {"type": "string"},
        "provider_kind": {"type": "string"},
        "subject": {"type": "string"},
        "email": {"type": "string"},
        "created_at": rest.TIMESTAMP,
        "last_used_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
IDENTITIES = {
    "type": "object",
    "required": ["items"],
    "properties": {"items": {"type": "array", "items": IDENTITY}},
}
PROVIDER_PATH = "/providers/{provider_id}"

OPERATIONS = [
    rest.Operation(
        "GET", "/providers", list_providers, "List upstream identity providers (admin)", ADMIN,
        response=rest.list_schema(PROVIDER), query=rest.PAGINATION, errors=(400, 401, 403),
    ),
    rest.Operation(
        "POST", "/providers", create_provider,
        "Add an upstream identity provider (admin); OpenID Connect metadata is discovered "
        "from its issuer", ADMIN, response=PROVIDER, status=201, request=NEW_PROVIDER,
        errors=(400, 401, 403),
    ),
    rest.Operation(
        "GET", PROVIDER_PATH, get_provider, "Read an upstream identity provider (admin)", ADMIN,
        response=PROVIDER,
    ),
    rest.Operation(
        "PATCH", PROVIDER_PATH, update_provider,
        "Change an upstream identity provider, e.g. disable it (admin)", ADMIN,
        response=PROVIDER, request=PROVIDER_CHANGES,
    ),
    rest.Operation(
        "DELETE", PROVIDER_PATH, delete_provider,
        "Delete an upstream identity provider and its links; accounts stay (admin)", ADMIN,
        status=204,
    ),
    rest.Operation(
        "GET", "/users/me/identities", my_identities,
        "The upstream accounts linked to mine (users:read)", READ, response=IDENTITIES,
        errors=(401, 403),
    ),
    rest.Operation(
        "GET", "/users/{user_id}/identities", user_identities,
        "A person's linked upstream accounts (admin)", ADMIN, response=IDENTITIES,
    ),
    rest.Operation(
        "DELETE", "/users/{user_id}/identities/{identity_id}", delete_user_identity,
        "Unlink an upstream account from a person, unless it is their last way in (admin)",
        ADMIN, status=204, errors=(400, 401, 403, 404, 409),
    ),
]  # fmt: skip
