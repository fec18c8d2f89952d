"""`/api/v1/organizations` and their members.

Handlers parse, call `models` in one transaction (the access check, the change and its audit
record commit together) and shape the answer. The rules live in `models`: a non-member gets
404 for anything of an organization (docs/security.md J75-76), roles decide the rest, and the
last owner stays. Tokens need `organizations:read` or `organizations:write` and must speak
for a person; an administrator's token with `admin` may act on every organization while
that person is still an administrator (J78).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import rest
from authserver.actors import Caller, caller
from authserver.errors import Forbidden, TooManyRequests
from authserver.organizations import models as orgs
from authserver.services import services
from authserver.users import models as users
from authserver.users.models import User

READ = ("organizations:read", "organizations:write")
WRITE = ("organizations:write",)
#: Adding by email tells whether an account exists; this bounds how fast anyone can ask.
MEMBER_ADDS_PER_HOUR = 60
HOUR = 3600


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


def _access(me: Caller, organization_id: str) -> orgs.Access:
    """The caller's standing, in the unit of work that acts on it. The `admin` scope counts
    only while its person is still an active administrator, read again now (J78)."""
    admin = me.principal is not None and me.principal.is_admin
    if admin:
        try:
            users.acting_admin(me.user_id)
        except Forbidden:
            admin = False
    return orgs.access(organization_id, me.user_id, admin=admin)


def _shape(organization: orgs.Organization, role: str | None) -> dict[str, Any]:
    return {**orgs.as_dict(organization), "role": role}


# -- organizations --------------------------------------------------------------------------


async def list_organizations(request: Request) -> Response:
    me = await caller(request, READ)
    listing = rest.Listing(request, f"organizations:{me.user_id}")
    rows = await rest.run_sync(
        request, orgs.list_for_user, me.user_id, after=listing.after, limit=listing.limit
    )
    return listing.page(rows, lambda row: (row[0].created_at, row[0].id), lambda row: _shape(*row))


async def create_organization(request: Request) -> Response:
    me = await caller(request, WRITE)
    body: NewOrganization = await rest.read_json(request, NewOrganization)

    def create() -> dict[str, Any]:
        organization = orgs.create(name=body.name, owner_id=me.user_id)
        me.record("organization.created", "organization", organization.id)
        return _shape(organization, "owner")

    created = await rest.run_sync(request, create)
    return rest.created(created, f"/organizations/{created['id']}")


async def get_organization(request: Request) -> Response:
    me = await caller(request, READ)
    organization_id = request.path_params["organization_id"]

    def read() -> dict[str, Any]:
        access = _access(me, organization_id)
        return _shape(access.organization, access.role)

    return JSONResponse(await rest.run_sync(request, read))


async def update_organization(request: Request) -> Response:
    me = await caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    body: OrganizationPatch = await rest.read_json(request, OrganizationPatch)

    def update() -> dict[str, Any]:
        access = _access(me, organization_id)
        previous = access.organization.name
        organization = orgs.rename(access, body.name)
        if organization.name != previous:
            me.record("organization.updated", "organization", organization_id, fields=["name"])
        return _shape(organization, access.role)

    return JSONResponse(await rest.run_sync(request, update))


async def delete_organization(request: Request) -> Response:
    me = await caller(request, WRITE)
    organization_id = request.path_params["organization_id"]

    def delete() -> None:
        orgs.delete(_access(me, organization_id))
        me.record("organization.deleted", "organization", organization_id)

    await rest.run_sync(request, delete)
    return Response(status_code=204)


# -- members --------------------------------------------------------------------------------


async def list_organization_members(request: Request) -> Response:
    me = await caller(request, READ)
    organization_id = request.path_params["organization_id"]
    listing = rest.Listing(request, f"members:{organization_id}")

    def read() -> list[tuple[orgs.Membership, User]]:
        _access(me, organization_id)
        return orgs.list_members(organization_id, after=listing.after, limit=listing.limit)

    rows = await rest.run_sync(request, read)
    return listing.page(
        rows, lambda row: (row[0].created_at, row[0].user_id), lambda row: orgs.member_as_dict(*row)
    )


async def add_organization_member(request: Request) -> Response:
    me = await caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    body: NewMember = await rest.read_json(request, NewMember)
    limiter = services(request).limiter
    retry_after = await run_in_threadpool(
        limiter.check, "org-member-add", me.user_id, MEMBER_ADDS_PER_HOUR, HOUR
    )
    if retry_after is not None:
        raise TooManyRequests(
            "Too many members added in the last hour; try again later.", retry_after=retry_after
        )

    def add() -> dict[str, Any]:
        access = _access(me, organization_id)
        membership, user = orgs.add_member(access, email=body.email, role=body.role)
        me.record(
            "organization.member_added",
            "organization",
            organization_id,
            user_id=user.id,
            role=membership.role,
        )
        return orgs.member_as_dict(membership, user)

    added = await rest.run_sync(request, add)
    return rest.created(added, f"/organizations/{organization_id}/members/{added['user_id']}")


async def change_organization_member_role(request: Request) -> Response:
    me = await caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    user_id = request.path_params["user_id"]
    body: MemberPatch = await rest.read_json(request, MemberPatch)

    def change() -> dict[str, Any]:
        access = _access(me, organization_id)
        membership, user, previous = orgs.change_role(access, user_id, body.role)
        if membership.role != previous:
            me.record(
                "organization.member_role_changed",
                "organization",
                organization_id,
                user_id=user_id,
                role=membership.role,
                previous_role=previous,
            )
        return orgs.member_as_dict(membership, user)

    return JSONResponse(await rest.run_sync(request, change))


async def remove_organization_member(request: Request) -> Response:
    me = await caller(request, WRITE)
    organization_id = request.path_params["organization_id"]
    user_id = request.path_params["user_id"]

    def remove() -> None:
        access = _access(me, organization_id)
        removed = orgs.remove_member(access, user_id, actor_id=me.user_id)
        leaving = user_id == me.user_id
        event = "organization.member_left" if leaving else "organization.member_removed"
        me.record(event, "organization", organization_id, user_id=user_id, role=removed.role)

    await rest.run_sync(request, remove)
    return Response(status_code=204)


# -- OpenAPI --------------------------------------------------------------------------------

ROLE = {"type": "string", "enum": list(orgs.ROLES)}
NAME = rest.name_schema(orgs.NAME_MAX)
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
        "created_at": rest.TIMESTAMP,
        "updated_at": rest.TIMESTAMP,
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
        "created_at": rest.TIMESTAMP,
    },
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
        query=rest.PAGINATION,
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
        request=rest.body_schema({"name": NAME}, ["name"]),
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
        request=rest.body_schema({"name": NAME}, ["name"]),
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
        query=rest.PAGINATION,
    ),
    rest.Operation(
        "POST",
        MEMBERS_PATH,
        add_organization_member,
        "Add an account by email (owner, admin; only an owner adds an owner)",
        WRITE,
        response=MEMBER,
        status=201,
        request=rest.body_schema(
            {"email": {"type": "string", "minLength": 1}, "role": ROLE}, ["email"]
        ),
        errors=(400, 401, 403, 404, 409, 429),
    ),
    rest.Operation(
        "PATCH",
        MEMBER_PATH,
        change_organization_member_role,
        "Change a member's role (owner, admin; the last owner stays)",
        WRITE,
        response=MEMBER,
        request=rest.body_schema({"role": ROLE}, ["role"]),
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
