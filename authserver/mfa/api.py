"""`/api/v1`: a person's second factors (their own, and anyone's for administrators), and
the organization policy requiring one.

Removing factors and resetting them is audited in the same transaction. A reset (the
person lost their phone and their codes) removes the app, the passkeys and the recovery
codes and turns their own "ask at every sign-in" off; it ends no session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import rest
from authserver.actors import ADMIN, Admin, admin, as_admin, caller
from authserver.db import current_session
from authserver.errors import NotFound
from authserver.mfa import models
from authserver.organizations.models import Organization
from authserver.users import models as users
from authserver.users.api import ME, READ, USER_PATH, WRITE

NO_SUCH_PASSKEY = "No such passkey."


def factors_of(user_id: str) -> dict[str, Any]:
    factor = models.totp_of(user_id)
    return {
        "totp": factor is not None and factor.confirmed_at is not None,
        "passkeys": [
            {
                "id": p.id,
                "name": p.name,
                "created_at": p.created_at.isoformat(),
                "last_used_at": p.last_used_at.isoformat() if p.last_used_at else None,
                "backup_eligible": p.backup_eligible,
                "backed_up": p.backed_up,
            }
            for p in models.passkeys_of(user_id)
        ],
        "recovery_codes_left": models.recovery_codes_left(user_id),
        "required": models.person_requires(user_id),
    }


async def get_my_factors(request: Request) -> Response:
    me = await caller(request, READ)
    return JSONResponse(await rest.run_sync(request, factors_of, me.user_id))


async def remove_my_passkey(request: Request) -> Response:
    me = await caller(request, WRITE)
    passkey_id = rest.path_id(request, "passkey_id")

    def remove() -> None:
        if not models.remove_passkey(me.user_id, passkey_id):
            raise NotFound(NO_SUCH_PASSKEY)
        me.record("mfa.passkey_removed", "user", me.user_id, passkey_id=passkey_id)

    await rest.run_sync(request, remove)
    return Response(status_code=204)


async def get_factors(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")

    def read() -> dict[str, Any]:
        users.existing(user_id)
        return factors_of(user_id)

    return JSONResponse(await as_admin(request, actor, read))


async def remove_totp(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")

    def remove() -> None:
        users.existing(user_id)
        if not models.remove_totp(user_id):
            raise NotFound("No authenticator app is set up.")
        actor.record("mfa.totp_removed", "user", user_id)

    await as_admin(request, actor, remove)
    return Response(status_code=204)


async def remove_passkey(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")
    passkey_id = rest.path_id(request, "passkey_id")

    def remove() -> None:
        if not models.remove_passkey(user_id, passkey_id):
            raise NotFound(NO_SUCH_PASSKEY)
        actor.record("mfa.passkey_removed", "user", user_id, passkey_id=passkey_id)

    await as_admin(request, actor, remove)
    return Response(status_code=204)


async def reset_factors(request: Request) -> Response:
    actor: Admin = await admin(request)
    user_id = rest.path_id(request, "user_id")

    def reset() -> dict[str, Any]:
        users.existing(user_id)
        models.remove_all(user_id)
        actor.record("mfa.reset", "user", user_id)
        return factors_of(user_id)

    return JSONResponse(await as_admin(request, actor, reset))


@dataclass(frozen=True)
class PolicyChange:
    required: bool


async def set_organization_policy(request: Request) -> Response:
    actor = await admin(request)
    organization_id = rest.path_id(request, "organization_id")
    body: PolicyChange = await rest.read_json(request, PolicyChange)

    def change() -> dict[str, Any]:
        if current_session().get(Organization, organization_id) is None:
            raise NotFound("No such organization.")
        models.set_organization_requires(organization_id, body.required)
        actor.record(
            "mfa.organization_policy_changed", "organization", organization_id,
            required=body.required,
        )  # fmt: skip
        return {"organization_id": organization_id, "required": body.required}

    return JSONResponse(await as_admin(request, actor, change))


async def get_organization_policy(request: Request) -> Response:
    actor = await admin(request)
    organization_id = rest.path_id(request, "organization_id")

    def read() -> dict[str, Any]:
        if current_session().get(Organization, organization_id) is None:
            raise NotFound("No such organization.")
        return {
            "organization_id": organization_id,
            "required": models.organization_requires(organization_id),
        }

    return JSONResponse(await as_admin(request, actor, read))


# -- OpenAPI ---------------------------------------------------------------------------------

PASSKEY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "name", "created_at", "last_used_at", "backup_eligible", "backed_up"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "created_at": rest.TIMESTAMP,
        "last_used_at": {"anyOf": [rest.TIMESTAMP, {"type": "null"}]},
        "backup_eligible": {"type": "boolean"},
        "backed_up": {"type": "boolean"},
    },
}
FACTORS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["totp", "passkeys", "recovery_codes_left", "required"],
    "properties": {
        "totp": {"type": "boolean", "description": "an authenticator app is set up"},
        "passkeys": {"type": "array", "items": PASSKEY},
        "recovery_codes_left": {"type": "integer", "minimum": 0},
        "required": {"type": "boolean", "description": "the person asks for it at every sign-in"},
    },
}
POLICY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["organization_id", "required"],
    "properties": {"organization_id": {"type": "string"}, "required": {"type": "boolean"}},
}
MY_FACTORS = ME + "/factors"
FACTORS_PATH = USER_PATH + "/factors"
POLICY_PATH = "/organizations/{organization_id}/mfa-policy"

OPERATIONS = [
    rest.Operation(
        "GET", MY_FACTORS, get_my_factors, "My second factors and passkeys (users:read)",
        READ, response=FACTORS, errors=(401, 403),
    ),
    rest.Operation(
        "DELETE", MY_FACTORS + "/passkeys/{passkey_id}", remove_my_passkey,
        "Remove one of my passkeys (users:write)", WRITE, status=204,
    ),
    rest.Operation(
        "GET", FACTORS_PATH, get_factors, "A person's second factors and passkeys (admin)",
        ADMIN, response=FACTORS,
    ),
    rest.Operation(
        "DELETE", FACTORS_PATH + "/totp", remove_totp,
        "Remove a person's authenticator app (admin)", ADMIN, status=204,
    ),
    rest.Operation(
        "DELETE", FACTORS_PATH + "/passkeys/{passkey_id}", remove_passkey,
        "Remove one of a person's passkeys (admin)", ADMIN, status=204,
    ),
    rest.Operation(
        "POST", FACTORS_PATH + "/reset", reset_factors,
        "Reset a person's second factor: remove their authenticator app, passkeys and "
        "recovery codes (admin; audited)",
        ADMIN, response=FACTORS,
    ),
    rest.Operation(
        "GET", POLICY_PATH, get_organization_policy,
        "Whether an organization requires a second factor of its members (admin)",
        ADMIN, response=POLICY,
    ),
    rest.Operation(
        "PUT", POLICY_PATH, set_organization_policy,
        "Require (or stop requiring) a second factor of an organization's members (admin)",
        ADMIN, response=POLICY,
        request=rest.body_schema({"required": {"type": "boolean"}}, ["required"]),
    ),
]  # fmt: skip
