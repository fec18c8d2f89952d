"""Passwords: forgotten (/reset-password and its emailed link) and changed (/account/password).

Asking for a reset link gives one answer for known, unknown and disabled accounts
(docs/security.md I72); a new password, either way, ends what was signed in with the old one.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import audit
from authserver.errors import Invalid, NotFound
from authserver.rendering import message, render
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.sessions.pages import ACCOUNT_WINDOW, current_login
from authserver.users import models as users
from authserver.users.self_service import (
    Letter,
    audit_own,
    duration,
    link_by_email,
    link_invalid,
    mail_later,
    posted_form,
)
from authserver.web import client_ip

CURRENT_WRONG = "The current password is not correct."


async def reset_password(request: Request) -> Response:
    """Ask for a reset link. The answer is the same for known, unknown and disabled accounts."""
    return await link_by_email(request, "reset_request.html", "reset", _request_reset)


async def reset_password_confirm(request: Request) -> Response:
    """The emailed link: choose a new password, which ends every session of the account."""
    svc = services(request)
    form = await posted_form(request, svc) if request.method == "POST" else None
    raw_token = request.query_params.get("token", "") if form is None else form.get("token", "")
    owner = await svc.db.run_sync(users.link_owner, svc.digester, raw_token, users.RESET_PASSWORD)
    if owner is None:
        return link_invalid(request, "/reset-password", "Request a new link")
    context = {"token": raw_token, "email": owner.email, "password_min": users.PASSWORD_MIN}
    if form is None:
        return render(request, "reset_password.html", context)
    password = form.get("password", "")
    try:
        users.validate_password(password, email=owner.email, name=owner.name)
    except Invalid as exc:
        return render(request, "reset_password.html", {**context, "error": exc.detail}, status=400)
    password_hash = await run_in_threadpool(svc.passwords.hash, password)
    letter = await svc.db.run_sync(
        _reset, svc, raw_token, password_hash=password_hash, ip=client_ip(request)
    )
    if letter is None:
        return link_invalid(request, "/reset-password", "Request a new link")
    response = message(
        request,
        "Password changed",
        "Your new password is set, and every device that was signed in has been signed out.",
        action=("/login", "Sign in"),
    )
    return mail_later(request, response, letter)


async def change_password(request: Request) -> Response:
    """A signed-in person changes their password; their other sessions end (docs/security.md H64:
    CSRF-protected; I71: a wrong current password counts like a failed sign-in)."""
    svc = services(request)
    form = await posted_form(request, svc) if request.method == "POST" else None
    login = await current_login(request)
    user = await svc.db.run_sync(users.get, login.user_id) if login else None
    if login is None or user is None:
        return RedirectResponse("/login", status_code=303)
    if form is None:
        return _change_form(request, user.email)
    current, new = form.get("current_password", ""), form.get("new_password", "")
    try:
        users.validate_password(new, email=user.email, name=user.name)
    except Invalid as exc:
        return _change_form(request, user.email, error=exc.detail, status=400)
    settings, limiter = svc.settings, svc.limiter
    retry_after = await run_in_threadpool(
        limiter.check, "login-account", user.email, settings.login_rate_per_account, ACCOUNT_WINDOW
    )
    if retry_after is not None:
        error = f"Too many attempts. Wait {duration(retry_after, round_up=True)} and try again."
        headers = {"Retry-After": str(retry_after)}
        return _change_form(request, user.email, error=error, status=429, headers=headers)
    ip = client_ip(request)
    if not await run_in_threadpool(svc.passwords.verify, user.password_hash, current):
        await svc.db.run_sync(
            audit_own,
            "password.changed",
            user.id,
            ip=ip,
            outcome="failure",
            reason="wrong_current_password",
        )
        return _change_form(request, user.email, error=CURRENT_WRONG, status=400)
    await run_in_threadpool(limiter.forgive, "login-account", user.email, ACCOUNT_WINDOW)
    password_hash = await run_in_threadpool(svc.passwords.hash, new)
    letter = await svc.db.run_sync(
        _change, svc, user.id, session_id=login.id, password_hash=password_hash, ip=ip
    )
    response = message(
        request,
        "Password changed",
        "Your new password is set. Every other device that was signed in has been signed out.",
    )
    return mail_later(request, response, letter)


def _request_reset(services: Services, email: str, ip: str) -> Letter | None:
    user = users.find_by_email(email)
    if user is None or not user.is_active:
        audit.record(
            "password.reset_requested",
            outcome="failure",
            ip=ip,
            target_type="user",
            target_id=user.id if user else None,
            reason="inactive_account" if user else "unknown_account",
        )
        return None
    lifetime = services.settings.password_reset_ttl
    raw_token = users.issue_link(
        services.digester, user_id=user.id, purpose=users.RESET_PASSWORD, lifetime=lifetime
    )
    audit.record("password.reset_requested", ip=ip, target_type="user", target_id=user.id)
    link = f"{services.settings.issuer}/reset-password/confirm?token={raw_token}"
    return Letter("reset_password", user.email, {"link": link, "lifetime": duration(lifetime)})


def _reset(services: Services, raw_token: str, *, password_hash: str, ip: str) -> Letter | None:
    """Spend the link and set the password; then nothing signed in before survives: every
    session ends and every token family is revoked, whoever held them. Following the link
    proves the mailbox, so the address counts as verified too."""
    user = users.redeem_link(services.digester, raw_token, users.RESET_PASSWORD)
    if user is None:
        return None
    users.set_password(user, password_hash)
    users.mark_email_verified(user)
    users.revoke_links(user.id, users.RESET_PASSWORD)
    ended = sessions.end_everything(services.app_access, user.id, reason="password_reset")
    audit_own("password.reset", user.id, ip=ip, **ended)
    return Letter("password_changed", user.email)


def _change(
    services: Services, user_id: str, *, session_id: str, password_hash: str, ip: str
) -> Letter:
    """Set the password and end everything but this browser's session and the tokens bound
    to it; offline grants end too. Outstanding reset links die with the old password."""
    user = users.get(user_id)
    if user is None:
        raise NotFound("The account no longer exists.")
    ended = sessions.change_password(
        services.app_access, user, password_hash, keep_session_id=session_id
    )
    audit_own("password.changed", user.id, ip=ip, **ended)
    return Letter("password_changed", user.email)


def _change_form(
    request: Request,
    email: str,
    *,
    error: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    context = {"email": email, "error": error, "password_min": users.PASSWORD_MIN}
    return render(request, "change_password.html", context, status=status, headers=headers)
