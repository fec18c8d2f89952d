"""`/api/v1/sessions`: the browser sessions a person is signed in with, and ending them.

A person sees and ends only their own sessions (`sessions:read` / `sessions:write`); another
person's session id answers 404 like an unknown one (docs/security.md J75, J79). Administrators
(`admin`) list and end anyone's under `/users/{user_id}/sessions`. Ending a session signs
that browser out on its next request, and the refresh and access tokens issued in it stop
working by reference: their token family checks that its session is alive (ASVS 7.4.5).
Grants with `offline_access` outlive the session by design (OIDC Core §11) and end with a
password change, a consent revocation or a deactivation instead.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import rest
from authserver.actors import ADMIN, admin, as_admin, caller
from authserver.db import Position
from authserver.services import services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession, end_others, end_own
from authserver.users import models as users

READ = ("sessions:read", "sessions:write")
WRITE = ("sessions:write",)


def as_dict(login: LoginSession, current_id: str | None) -> dict[str, Any]:
    return {
        "id": login.id,
        "device": login.user_agent,
        "ip": login.ip,
        "created_at": login.created_at.isoformat(),
        "last_seen_at": login.last_seen_at.isoformat(),
        "current": login.id == current_id,
    }


def _position(login: LoginSession) -> Position:
    return login.created_at, login.id


async def list_my_sessions(request: Request) -> Response:
    me = await caller(request, READ)
    listing = rest.Listing(request, f"sessions:{me.user_id}")

    def read() -> tuple[list[LoginSession], str | None]:
        rows = sessions.page_for_user(me.user_id, after=listing.after, limit=listing.limit)
        return rows, me.session_id()

    rows, current_id = await rest.run_sync(request, read)
    return listing.page(rows, _position, lambda login: as_dict(login, current_id))


async def end_my_session(request: Request) -> Response:
    me = await caller(request, WRITE)
    session_id = rest.path_id(request, "session_id")
    access = services(request).app_access
    await rest.run_sync(request, end_own, access, me, me.user_id, session_id)
    return Response(status_code=204)


async def end_my_other_sessions(request: Request) -> Response:
    """Every session but the one the caller's token was issued in."""
    me = await caller(request, WRITE)
    access = services(request).app_access
    ended = await rest.run_sync(request, lambda: end_others(access, me, me.session_id()))
    return JSONResponse({"ended": ended})


async def list_user_sessions(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")
    listing = rest.Listing(request, f"sessions:{user_id}")

    def read() -> list[LoginSession]:
        users.existing(user_id)
        return sessions.page_for_user(user_id, after=listing.after, limit=listing.limit)

    rows = await as_admin(request, actor, read)
    return listing.page(rows, _position, lambda login: as_dict(login, None))


async def end_user_session(request: Request) -> Response:
    actor = await admin(request)
    user_id = rest.path_id(request, "user_id")
    session_id = rest.path_id(request, "session_id")
    access = services(request).app_access
    await as_admin(request, actor, lambda: end_own(access, actor, user_id, session_id))
    return Response(status_code=204)


# -- OpenAPI ---------------------------------------------------------------------------------

SESSION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "device", "ip", "created_at", "last_seen_at", "current"],
    "properties": {
        "id": {"type": "string"},
        "device": {"type": "string", "description": "The browser's User-Agent at sign-in."},
        "ip": {"type": "string"},
        "created_at": rest.TIMESTAMP,
        "last_seen_at": rest.TIMESTAMP,
        "current": {
            "type": "boolean",
            "description": "Whether the calling token was issued in this session.",
        },
    },
}
ENDED = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ended"],
    "properties": {"ended": {"type": "integer", "minimum": 0}},
}

OPERATIONS = [
    rest.Operation(
        "GET", "/sessions", list_my_sessions, "List my live sessions (sessions:read)", READ,
        response=rest.list_schema(SESSION), query=rest.PAGINATION, errors=(400, 401, 403),
    ),
    rest.Operation(
        "DELETE", "/sessions", end_my_other_sessions,
        "End all my sessions except the one this token was issued in (sessions:write)",
        WRITE, response=ENDED, errors=(400, 401, 403),
    ),
    rest.Operation(
        "DELETE", "/sessions/{session_id}", end_my_session,
        "End one of my sessions: that browser is signed out and its session-bound tokens "
        "stop working (sessions:write)",
        WRITE, status=204,
    ),
    rest.Operation(
        "GET", "/users/{user_id}/sessions", list_user_sessions,
        "List a user's live sessions (admin)", ADMIN,
        response=rest.list_schema(SESSION), query=rest.PAGINATION,
    ),
    rest.Operation(
        "DELETE", "/users/{user_id}/sessions/{session_id}", end_user_session,
        "End a user's session (admin)", ADMIN, status=204,
    ),
]  # fmt: skip
