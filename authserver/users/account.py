"""/account: where a signed-in person sees what their account is signed in to and undoes it.

It shows the browser sessions (with `End session`), the applications they allowed (with
`Revoke`), their organizations and a way to change the password (SPEC §6; ASVS 10.7.3).
Every button is a CSRF-checked POST (docs/security.md H64) that redirects back here (303), so the
page works without JavaScript and a reload never repeats an action. The changes go through
the same functions as the API, so a revoked consent or an ended session ends the same tokens.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import rest
from authserver.actors import Caller
from authserver.app_access import AppAccess
from authserver.db import utcnow
from authserver.federation import pages as federation
from authserver.mfa import pages as mfa_pages
from authserver.organizations import models as orgs
from authserver.rendering import render
from authserver.services import services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.sessions.pages import clear_session_cookie, current_login
from authserver.users import models as users
from authserver.web import CSRF_FIELD, client_ip, read_form

#: More rows than anyone has; the API pages through the rest.
SHOWN = 100
NOTICES = {
    "session_ended": "The session has ended: that device is signed out.",
    "sessions_ended": "Your other sessions have ended.",
    "consent_revoked": "Access revoked: the app can no longer use your account.",
    **mfa_pages.ACCOUNT_NOTICES,
    "linked": "The account is linked: you can sign in with it from now on.",
    "unlinked": "The account is no longer linked.",
}
BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
            ("Safari/", "Safari"))  # fmt: skip
SYSTEMS = (("iPhone", "iPhone"), ("iPad", "iPad"), ("Android", "Android"), ("Windows", "Windows"),
           ("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))  # fmt: skip


async def account(request: Request) -> Response:
    login = await current_login(request)
    if login is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    svc = services(request)
    view = await svc.db.run_sync(_view, svc.app_access, login)
    view["notice"] = NOTICES.get(request.query_params.get("done", ""))
    return render(request, "account.html", view)


async def end_session(request: Request) -> Response:
    """End one of my sessions; ending this browser's own signs it out here and now."""
    signed_in = await _signed_in_post(request)
    if signed_in is None:
        return RedirectResponse("/login", status_code=303)
    login, actor = signed_in
    session_id = rest.path_id(request, "session_id")
    svc = services(request)
    await svc.db.run_sync(sessions.end_own, svc.app_access, actor, login.user_id, session_id)
    if session_id != login.id:
        return RedirectResponse("/account?done=session_ended", status_code=303)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, svc.settings)
    return response


async def end_other_sessions(request: Request) -> Response:
    signed_in = await _signed_in_post(request)
    if signed_in is None:
        return RedirectResponse("/login", status_code=303)
    login, actor = signed_in
    svc = services(request)
    await svc.db.run_sync(sessions.end_others, svc.app_access, actor, login.id)
    return RedirectResponse("/account?done=sessions_ended", status_code=303)


async def revoke_consent(request: Request) -> Response:
    signed_in = await _signed_in_post(request)
    if signed_in is None:
        return RedirectResponse("/login", status_code=303)
    _, actor = signed_in
    consent_id = rest.path_id(request, "consent_id")
    svc = services(request)
    await svc.db.run_sync(svc.app_access.revoke_app, actor, consent_id)
    return RedirectResponse("/account?done=consent_revoked", status_code=303)


async def _signed_in_post(request: Request) -> tuple[LoginSession, Caller] | None:
    """The CSRF check comes first, so a forged POST changes nothing whoever is signed in."""
    form = await read_form(request)
    services(request).csrf.verify(request, form.get(CSRF_FIELD))
    login = await current_login(request)
    if login is None:
        return None
    return login, Caller(login.user_id, client_ip(request))


def _view(access: AppAccess, login: LoginSession) -> dict[str, Any]:
    now = utcnow()
    user = users.get(login.user_id)
    assert user is not None, "a live session has a user"
    logins = sessions.page_for_user(user.id, after=None, limit=SHOWN, now=now)
    logins.sort(key=lambda row: (row.id != login.id, -row.last_seen_at.timestamp()))
    return {
        "title": "Your account",
        "user": user,
        "sessions": [
            {
                "id": row.id,
                "device": describe_device(row.user_agent),
                "user_agent": row.user_agent,
                "ip": row.ip or "unknown",
                "last_seen": ago(row.last_seen_at, now),
                "last_seen_at": row.last_seen_at.isoformat(),
                "current": row.id == login.id,
            }
            for row in logins
        ],
        "consents": [
            {
                "id": app.consent_id,
                "client_name": app.client_name,
                "scopes": app.scopes,
                "since": f"{app.since.day} {app.since:%B %Y}",
                "since_at": app.since.isoformat(),
            }
            for app in access.allowed_apps(user.id, limit=SHOWN)
        ],
        "mfa": mfa_pages.account_view(user.id),
        "organizations": [
            {"name": organization.name, "role": role}
            for organization, role in orgs.list_for_user(user.id, after=None, limit=SHOWN)
        ],
        **federation.account_view(user.id),
    }


def describe_device(user_agent: str) -> str:
    """A device named for people ("Firefox on Linux") from its User-Agent, or the start of
    the User-Agent when it names no browser or system we know."""
    browser = next((name for mark, name in BROWSERS if mark in user_agent), None)
    system = next((name for mark, name in SYSTEMS if mark in user_agent), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return str(browser or system)
    words = re.sub(r"\s+", " ", user_agent).strip()
    return words[:40] or "Unknown device"


def ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"
