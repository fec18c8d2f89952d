"""`/api/v1/users`: a person's own account (`/users/me`), and every account for administrators.

`/users/me` needs `users:read` or `users:write`; the other routes need `admin`, and the
administrator behind the token is read again on every request, so a demoted or disabled
admin loses the power at once (docs/security.md J78). Each change commits with its audit record
in one transaction. Ending what a person was signed in with happens in the same place for
every path: sessions end and token families are revoked, so refresh tokens fail and access
tokens turn inactive by reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import rest
from authserver.actors import ADMIN, Admin, admin, as_admin, caller
from authserver.app_access import AppAccess
from authserver.errors import Conflict, Invalid, TooManyRequests
from authserver.organizations import models as orgs
from authserver.services import services
from authserver.sessions import models as sessions
from authserver.sessions.models import end_everything
from authserver.sessions.pages import ACCOUNT_WINDOW
from authserver.users import models as users
from authserver.users.models import User

READ = ("users:read", "users:write")
WRITE = ("users:write",)
T = TypeVar("T")


def query_text(request: Request, name: str, limit: int = users.EMAIL_MAX) -> str | None:
    value = request.query_params.get(name)
    if value is not None and (len(value) > limit or not value.isprintable()):
        raise Invalid(f"`{name}` must be at most {limit} printable characters.")
    return value


def _delete(actor: Admin, user: User, access: AppAccess) -> None:
    """Delete an account, unless that would leave the server without an administrator or an
    organization without an owner (the last-owner rule, SPEC §7); its sessions end and its
    token families are revoked first, so no cascade order matters."""
    users.keeps_an_admin(user)
    owned = orgs.solely_owned(user.id)
    if owned:
        raise Conflict(
            f"The account is the only owner of {len(owned)} organization(s); "
            "make someone else an owner first."
        )
    ended = end_everything(access, user.id, reason="account_deleted")
    actor.record("user.deleted", "user", user.id, **ended)
    users.delete_user(user)


# -- my account ------------------------------------------------------------------------------


@dataclass
class MyPatch:
    name: str


@dataclass
class PasswordChange:
    current_password: str
    new_password: str


async def get_me(request: Request) -> Response:
    me = await caller(request, READ)
    return JSONResponse(
        await rest.run_sync(request, lambda: users.as_dict(users.existing(me.user_id)))
    )


async def update_me(request: Request) -> Response:
    """Only the name: the email address is where reset links go, so changing it needs a
    verified new address first, which this API does not do (ASVS 7.5.1)."""
    me = await caller(request, WRITE)
    body: MyPatch = await rest.read_json(request, MyPatch)
    name = users.validate_name(body.name)

    def update() -> dict[str, object]:
        user = users.existing(me.user_id)
        if user.name != name:
            user.name = name
            me.record("user.updated", "user", user.id, fields=["name"])
        return users.as_dict(user)

    return JSONResponse(await rest.run_sync(request, update))


async def delete_me(request: Request) -> Response:
    me = await caller(request, WRITE)

    access = services(request).app_access

    def delete() -> None:
        _delete(me, users.existing(me.user_id), access)

    await rest.run_sync(request, delete)
    return Response(status_code=204)


async def change_my_password(request: Request) -> Response:
    """The current password proves the person is present, and a wrong one counts against
    the same per-account limit as signing in (docs/security.md I71). Afterwards only the calling
    session and the tokens bound to it survive; offline grants end too."""
    me = await caller(request, WRITE)
    body: PasswordChange = await rest.read_json(request, PasswordChange)
    svc = services(request)
    user = await svc.db.run_sync(users.existing, me.user_id)
    users.validate_password(body.new_password, email=user.email, name=user.name)
    settings, limiter = svc.settings, svc.limiter
    retry_after = await run_in_threadpool(
        limiter.check, "login-account", user.email, settings.login_rate_per_account, ACCOUNT_WINDOW
    )
    if retry_after is not None:
        raise TooManyRequests("Too many attempts; try again later.", retry_after=retry_after)
    candidate = users.Candidate(user.id, user.password_hash)
    if not await run_in_threadpool(
        users.check_password, svc.passwords, candidate, body.current_password
    ):
        await svc.db.run_sync(
            me.record,
            "password.changed",
            "user",
            user.id,
            outcome="failure",
            reason="wrong_current_password",
        )
        raise Invalid("The current password is not correct.")
    await run_in_threadpool(limiter.forgive, "login-account", user.email, ACCOUNT_WINDOW)
    password_hash = await run_in_threadpool(svc.passwords.hash, body.new_password)

    def change() -> None:
        user = users.existing(me.user_id)
        ended = sessions.change_password(
            svc.app_access, user, password_hash, keep_session_id=me.session_id()
        )
        me.record("password.changed", "user", user.id, **ended)

    await svc.db.run_sync(change)
    return Response(status_code=204)


# -- administration --------------------------------------------------------------------------


@dataclass
class NewUser:
    email: str
    name: str = ""
    password: str | None = None
    is_admin: bool = False
    email_verified: bool = False


@dataclass
class UserPatch:
    """Absent or null members stay as they are."""

    name: str | None = None
    is_admin: bool | None = None
    email_verified: bool | None = None
    is_active: bool | None = None


def _deactivate(actor: Admin, user: User, access: AppAccess) -> None:
    """Disabled at once and for good: the sessions and token families end now, rather than
    only while the flag is off, so reactivating the account brings none of them back."""
    users.keeps_an_admin(user)
    user.is_active = False
    ended = end_everything(access, user.id, reason="user_deactivated")
    actor.record("user.deactivated", "user", user.id, **ended)


async def create_user(request: Request) -> Response:
    actor = await admin(request)
    body: NewUser = await rest.read_json(request, NewUser)
    email = users.validate_email(body.email)
    name = users.validate_name(body.name) if body.name else ""
    password_hash = None
    if body.password is not None:
        users.validate_password(body.password, email=email, name=name)
        passwords = services(request).passwords
        password_hash = await run_in_threadpool(passwords.hash, body.password)

    def create() -> dict[str, object]:
        user = users.create(
            email=email, password_hash=password_hash, name=name, is_admin=body.is_admin
        )
        user.email_verified = body.email_verified
        actor.record(
            "user.created",
            "user",
            user.id,
            is_admin=user.is_admin,
            email_verified=user.email_verified,
            has_password=password_hash is not None,
        )
        return users.as_dict(user)

    created = await as_admin(request, actor, create)
    return rest.created(created, f"/users/{created['id']}")


async def list_users(request: Request) -> Response:
    actor = await admin(request)
    email = query_text(request, "email")
    flag = request.query_params.get("active")
    if flag not in (None, "true", "false"):
        raise Invalid("`active` must be true or false.")
    active = None if flag is None else flag == "true"
    listing = rest.Listing(request, "users")

    def read() -> list[User]:
        return users.page(after=listing.after, limit=listing.limit, email=email, active=active)

    rows = await as_admin(request, actor, read)
    return listing.page(rows, lambda user: (user.created_at, user.id), users.as_dict)


async def get_user(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")

    def read() -> dict[str, object]:
        return users.as_dict(users.existing(user_id))

    return JSONResponse(await as_admin(request, actor, read))


async def update_user(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")
    body: UserPatch = await rest.read_json(request, UserPatch)
    name = users.validate_name(body.name) if body.name is not None else None
    access = services(request).app_access

    def update() -> dict[str, object]:
        user = users.existing(user_id)
        if body.is_admin is False or body.is_active is False:
            users.keeps_an_admin(user)
        requested = {"name": name, "is_admin": body.is_admin, "email_verified": body.email_verified}
        if body.is_active:
            requested["is_active"] = True
        changes = {
            field: value
            for field, value in requested.items()
            if value is not None and getattr(user, field) != value
        }
        for field, value in changes.items():
            setattr(user, field, value)
        if changes:
            flags: dict[str, Any] = {f: v for f, v in changes.items() if f != "name"}
            actor.record("user.updated", "user", user.id, fields=sorted(changes), **flags)
        if body.is_active is False and user.is_active:
            _deactivate(actor, user, access)
        return users.as_dict(user)

    return JSONResponse(await as_admin(request, actor, update))


async def deactivate_user(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")

    access = services(request).app_access

    def deactivate() -> dict[str, object]:
        user = users.existing(user_id)
        _deactivate(actor, user, access)
        return users.as_dict(user)

    return JSONResponse(await as_admin(request, actor, deactivate))


async def delete_user(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")

    access = services(request).app_access

    def delete() -> None:
        _delete(actor, users.existing(user_id), access)

    await as_admin(request, actor, delete)
    return Response(status_code=204)


# -- OpenAPI ---------------------------------------------------------------------------------

NAME = {"type": "string", "minLength": 1, "maxLength": users.NAME_MAX, "pattern": r"\S"}
PASSWORD = {"type": "string", "minLength": users.PASSWORD_MIN, "maxLength": users.PASSWORD_MAX}
USER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "email", "name", "email_verified", "is_admin", "is_active", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "email": {"type": "string"},
        "name": {"type": "string"},
        "email_verified": {"type": "boolean"},
        "is_admin": {"type": "boolean"},
        "is_active": {"type": "boolean"},
        "created_at": rest.TIMESTAMP,
    },
}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


ME = "/users/me"
USER_PATH = "/users/{user_id}"
LAST_ADMIN = (400, 401, 403, 404, 409)

OPERATIONS = [
    rest.Operation(
        "GET", ME, get_me, "Read my account (users:read)", READ, response=USER,
    ),
    rest.Operation(
        "PATCH", ME, update_me, "Change my name (users:write); the email address is not editable",
        WRITE, response=USER, request=rest.body_schema({"name": NAME}, ["name"]),
    ),
    rest.Operation(
        "DELETE", ME, delete_me,
        "Delete my account, ending its sessions and revoking its tokens (users:write); "
        "refused while I am the last administrator or an organization's only owner",
        WRITE, status=204, errors=LAST_ADMIN,
    ),
    rest.Operation(
        "POST", ME + "/password", change_my_password,
        "Change my password; my other sessions end and only this session's tokens survive "
        "(users:write)",
        WRITE, status=204, errors=(400, 401, 403, 404, 429),
        request=rest.body_schema(
            {"current_password": {"type": "string"}, "new_password": PASSWORD},
            ["current_password", "new_password"],
        ),
    ),
    rest.Operation(
        "POST", "/users", create_user, "Create an account (admin)", ADMIN,
        response=USER, status=201, errors=(400, 401, 403, 409),
        request=rest.body_schema(
            {
                "email": {"type": "string", "format": "email", "maxLength": users.EMAIL_MAX},
                "name": {"type": "string", "maxLength": users.NAME_MAX},
                "password": nullable(PASSWORD),
                "is_admin": {"type": "boolean"},
                "email_verified": {"type": "boolean"},
            },
            ["email"],
        ),
    ),
    rest.Operation(
        "GET", "/users", list_users,
        "List accounts, oldest first (admin); filter by exact email or by active", ADMIN,
        response=rest.list_schema(USER), errors=(400, 401, 403),
        query={
            "email": {"type": "string", "maxLength": users.EMAIL_MAX},
            "active": {"type": "boolean"},
            **rest.PAGINATION,
        },
    ),
    rest.Operation("GET", USER_PATH, get_user, "Read an account (admin)", ADMIN, response=USER),
    rest.Operation(
        "PATCH", USER_PATH, update_user,
        "Change an account's name, admin flag, verified flag or active flag (admin); "
        "turning is_active off deactivates it",
        ADMIN, response=USER, errors=LAST_ADMIN,
        request=rest.body_schema(
            {
                "name": nullable(NAME),
                "is_admin": nullable({"type": "boolean"}),
                "email_verified": nullable({"type": "boolean"}),
                "is_active": nullable({"type": "boolean"}),
            },
            [],
        ),
    ),
    rest.Operation(
        "POST", USER_PATH + "/deactivate", deactivate_user,
        "Deactivate an account: its sessions end and its tokens are revoked at once (admin)",
        ADMIN, response=USER, errors=LAST_ADMIN,
    ),
    rest.Operation(
        "DELETE", USER_PATH, delete_user,
        "Delete an account, ending its sessions and revoking its tokens (admin); refused "
        "for the last administrator or an organization's only owner",
        ADMIN, status=204, errors=LAST_ADMIN,
    ),
]  # fmt: skip
