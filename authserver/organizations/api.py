"""`/api/v1/organizations` and their members.

Handlers parse, call `models` in one transaction (the access check, the change and its audit
record commit together) and shape the answer. The rules live in `models`: a non-member gets
404 for anything of an organization (SECURITY.md J75-76), roles decide the rest, and the
last owner stays. Tokens need `organizations:read` or `organizations:write`; a token with
`admin` may act on every organization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import audit, rest
from authserver.errors import AppError, Invalid
from authserver.organizations import models as orgs
from authserver.users.models import User

READ = ("organizations:read", "organizations:write")
WRITE = ("organizations:write",)
#: Adding by email tells whether an account exists; this bounds how fast anyone can ask.
MEMBER_ADDS_PER_HOUR = 60
HOUR = 3600


class TooManyRequests(AppError):
    status_code = 429
    title = "Too Many Requests"


@dataclass
class NewOrganization:
    name: str


@dataclass
class OrganizationPatch:
    name: str


@dataclass
class NewMember:
    email: str
    role: str = "member"


@dataclass
class MemberPatch:
    role: str


@dataclass(frozen=True)
class Actor:
    """Who made a change, as the audit trail records it."""

    principal: rest.Principal
    ip: str

    def record(self, event: str, target_type: str, target_id: str, **details: Any) -> None:
        audit.record(
            event,
            actor_type="user" if self.principal.user_id else "client",
            actor_id=self.principal.user_id or self.principal.client_id,
            ip=self.ip,
            target_type=target_type,
            target_id=target_id,
            client_id=self.principal.client_id,
            **details,
        )


async def _caller(request: Request, scopes: tuple[str, ...]) -> Actor:
    principal = await rest.authenticate(request, scopes)
    if not principal.is_admin:
        principal.require_user()
    return Actor(principal, request.client.host if request.client else "")


def _access(actor: Actor, organization_id: str) -> orgs.Access:
    principal = actor.principal
    return orgs.access(organization_id, principal.user_id, admin=principal.is_admin)


def _shape(organization: orgs.Organization, role: str | None) -> dict[str, Any]:
    return {**orgs.as_dict(organization), "role": role}


def _cursors(request: Request) -> rest.Cursors:
    return rest.Cursors(request.app.state.services.digester.key("cursor"))


def _after(request: Request, listing: str) -> orgs.Position | None:
    """The position a cursor points at, if it was made for this very listing: a cursor
    from someone else's listing is refused, never reinterpreted (SECURITY.md J75)."""
    position = _cursors(request).decode(request.query_params.get("cursor"))
    if position is None:
        return None
    if len(position) != 3 or position[0] != listing:
        raise Invalid("The cursor does not belong to this listing.")
    try:
        return datetime.fromisoformat(position[1]), position[2]
    except ValueError:
        raise Invalid("The cursor is not valid.") from None


def _page(
    request: Request,
    listing: str,
    rows: list[Any],
    size: int,
    position: Callable[[Any], orgs.Position],
    shape: Callable[..., dict[str, Any]],
) -> Response:
    """One page of `size` rows; `rows` was fetched with one extra to tell whether more follow."""
    cursor = None
    if len(rows) > size:
        rows = rows[:size]
        created_at, row_id = position(rows[-1])
        cursor = _cursors(request).encode([listing, created_at.isoformat(), row_id])
    return rest.page([shape(*row) for row in rows], cursor)


def _organization_position(row: tuple[orgs.Organization, str]) -> orgs.Position:
    return row[0].created_at, row[0].id


def _member_position(row: tuple[orgs.Membership, User]) -> orgs.Position:
    return row[0].created_at, row[0].user_id


def _db(request: Request) -> Any:
    return request.app.state.services.db


# -- organizations --------------------------------------------------------------------------


async def list_organizations(request: Request) -> Response:
    actor = await _caller(request, READ)
    user_id = actor.principal.require_user()
    size = rest.page_size(request)
    listing = f"organizations:{user_id}"
    after = _after(request, listing)
    rows = await _db(request).run_sync(orgs.list_for_user, user_id, after=after, limit=size + 1)
    return _page(request, listing, rows, size, _organization_position, _shape)


async def create_organization(request: Request) -> Response:
    actor = await _caller(request, WRITE)
    user_id = actor.principal.require_user()
    body: NewOrganization = await rest.read_json(request, NewOrganization)

    def create() -> dict[str, Any]:
        organization = orgs.create(name=body.name, owner_id=user_id)
        actor.record("organization.created", "organization", organization.id)
        return _shape(organization, "owner")

    created = await _db(request).run_sync(create)
    location = f"{rest.API_PREFIX}/organizations/{created['id']}"
    return JSONResponse(created, 201, headers={"Location": location})


async def get_organization(request: Request) -> Response:
    actor = await _caller(request, READ)
    organization_id = request.path_params["organization_id"]

    def read() -> dict[str, Any]:
        access = _access(actor, organization_id)
        return _shape(access.organization, access.role)

    return JSONResponse(await _db(request).run_sync(read))


async def update_organization(request: Request) -> Response:
    actor = await _caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    body: OrganizationPatch = await rest.read_json(request, OrganizationPatch)

    def update() -> dict[str, Any]:
        access = _access(actor, organization_id)
        previous = access.organization.name
        organization = orgs.rename(access, body.name)
        if organization.name != previous:
            actor.record("organization.updated", "organization", organization_id, fields=["name"])
        return _shape(organization, access.role)

    return JSONResponse(await _db(request).run_sync(update))


async def delete_organization(request: Request) -> Response:
    actor = await _caller(request, WRITE)
    organization_id = request.path_params["organization_id"]

    def delete() -> None:
        orgs.delete(_access(actor, organization_id))
        actor.record("organization.deleted", "organization", organization_id)

    await _db(request).run_sync(delete)
    return Response(status_code=204)


# -- members --------------------------------------------------------------------------------


async def list_organization_members(request: Request) -> Response:
    actor = await _caller(request, READ)
    organization_id = request.path_params["organization_id"]
    size = rest.page_size(request)
    listing = f"members:{organization_id}"
    after = _after(request, listing)

    def read() -> list[tuple[orgs.Membership, User]]:
        _access(actor, organization_id)
        return orgs.list_members(organization_id, after=after, limit=size + 1)

    rows = await _db(request).run_sync(read)
    return _page(request, listing, rows, size, _member_position, orgs.member_as_dict)


async def add_organization_member(request: Request) -> Response:
    actor = await _caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    body: NewMember = await rest.read_json(request, NewMember)
    services = request.app.state.services
    caller = actor.principal.user_id or actor.principal.client_id
    retry_after = await run_in_threadpool(
        services.limiter.check, "org-member-add", caller, MEMBER_ADDS_PER_HOUR, HOUR
    )
    if retry_after is not None:
        raise TooManyRequests(
            "Too many members added in the last hour; try again later.",
            headers={"Retry-After": str(retry_after)},
        )

    def add() -> dict[str, Any]:
        membership, user = orgs.add_member(
            _access(actor, organization_id), email=body.email, role=body.role
        )
        actor.record(
            "organization.member_added",
            "organization",
            organization_id,
            user_id=user.id,
            role=membership.role,
        )
        return orgs.member_as_dict(membership, user)

    added = await _db(request).run_sync(add)
    location = f"{rest.API_PREFIX}/organizations/{organization_id}/members/{added['user_id']}"
    return JSONResponse(added, 201, headers={"Location": location})


async def change_organization_member_role(request: Request) -> Response:
    actor = await _caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    user_id = request.path_params["user_id"]
    body: MemberPatch = await rest.read_json(request, MemberPatch)

    def change() -> dict[str, Any]:
        membership, user, previous = orgs.change_role(
            _access(actor, organization_id), user_id, body.role
        )
        if membership.role != previous:
            actor.record(
                "organization.member_role_changed",
                "organization",
                organization_id,
                user_id=user_id,
                role=membership.role,
                previous_role=previous,
            )
        return orgs.member_as_dict(membership, user)

    return JSONResponse(await _db(request).run_sync(change))


async def remove_organization_member(request: Request) -> Response:
    actor = await _caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    user_id = request.path_params["user_id"]

    def remove() -> None:
        removed = orgs.remove_member(
            _access(actor, organization_id), user_id, actor_id=actor.principal.user_id
        )
        event = (
            "organization.member_left"
            if user_id == actor.principal.user_id
            else "organization.member_removed"
        )
        actor.record(event, "organization", organization_id, user_id=user_id, role=removed.role)

    await _db(request).run_sync(remove)
    return Response(status_code=204)


# -- OpenAPI --------------------------------------------------------------------------------

TIMESTAMP = {"type": "string", "format": "date-time"}
ROLE = {"type": "string", "enum": list(orgs.ROLES)}
NAME = {"type": "string", "minLength": 1, "maxLength": orgs.NAME_MAX, "pattern": r"\S"}
ORGANIZATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "name", "role", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "role": {
            "description": "Your role in it; null for an administrator who is not a member.",
            "type": ["string", "null"],
            "enum": [*orgs.ROLES, None],
        },
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    },
}
MEMBER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["user_id", "email", "name", "role", "created_at"],
    "properties": {
        "user_id": {"type": "string"},
        "email": {"type": "string"},
        "name": {"type": "string"},
        "role": ROLE,
        "created_at": TIMESTAMP,
    },
}
PAGINATION = {
    "page_size": {"type": "integer", "minimum": 1, "maximum": rest.MAX_PAGE_SIZE},
    "cursor": {"type": "string"},
}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": required,
        "properties": properties,
    }


ORGANIZATION_PATH = "/organizations/{organization_id}"
MEMBERS_PATH = ORGANIZATION_PATH + "/members"
MEMBER_PATH = MEMBERS_PATH + "/{user_id}"

OPERATIONS = [
    rest.Operation(
        "GET",
        "/organizations",
        list_organizations,
        "List my organizations, with my role",
        READ,
        response=rest.list_schema(ORGANIZATION),
        query=PAGINATION,
        errors=(400, 401, 403),
    ),
    rest.Operation(
        "POST",
        "/organizations",
        create_organization,
        "Create an organization (I become owner)",
        WRITE,
        response=ORGANIZATION,
        status=201,
        request=_body({"name": NAME}, ["name"]),
        errors=(400, 401, 403),
    ),
    rest.Operation(
        "GET",
        ORGANIZATION_PATH,
        get_organization,
        "Read an organization I belong to",
        READ,
        response=ORGANIZATION,
    ),
    rest.Operation(
        "PATCH",
        ORGANIZATION_PATH,
        update_organization,
        "Rename an organization (owner, admin)",
        WRITE,
        response=ORGANIZATION,
        request=_body({"name": NAME}, ["name"]),
    ),
    rest.Operation(
        "DELETE",
        ORGANIZATION_PATH,
        delete_organization,
        "Delete an organization (owner)",
        WRITE,
        status=204,
    ),
    rest.Operation(
        "GET",
        MEMBERS_PATH,
        list_organization_members,
        "List an organization's members",
        READ,
        response=rest.list_schema(MEMBER),
        query=PAGINATION,
    ),
    rest.Operation(
        "POST",
        MEMBERS_PATH,
        add_organization_member,
        "Add an account by email (owner, admin; only an owner adds an owner)",
        WRITE,
        response=MEMBER,
        status=201,
        request=_body({"email": {"type": "string", "minLength": 1}, "role": ROLE}, ["email"]),
        errors=(400, 401, 403, 404, 409, 429),
    ),
    rest.Operation(
        "PATCH",
        MEMBER_PATH,
        change_organization_member_role,
        "Change a member's role (owner, admin; the last owner stays)",
        WRITE,
        response=MEMBER,
        request=_body({"role": ROLE}, ["role"]),
        errors=(400, 401, 403, 404, 409),
    ),
    rest.Operation(
        "DELETE",
        MEMBER_PATH,
        remove_organization_member,
        "Remove a member, or leave (the last owner cannot)",
        WRITE,
        status=204,
        errors=(400, 401, 403, 404, 409),
    ),
]
