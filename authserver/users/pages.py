"""Self-service account pages: sign-up, email verification, password reset and change.

Every page that takes an email address gives one answer whether or not an account uses it,
so none of them tells a visitor who is registered (docs/security.md I72); what differs goes only
into the mailbox. Emailed links are single-use digests in `email_tokens`: opening one shows
a form, and only its POST spends the link, so mail scanners that prefetch links spend nothing.
Mail leaves after the response, once the transaction has committed (`outbound.deliver`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from jinja2 import Environment
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import audit, outbound
from authserver.errors import Conflict, Invalid, NotFound
from authserver.outbound import Mail
from authserver.rendering import render
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.sessions.pages import ACCOUNT_WINDOW, current_login
from authserver.users import models as users
from authserver.web import CSRF_FIELD, client_ip

log = logging.getLogger("authserver.users")

HOUR = 3600
NAME_MAX = 200
LINK_INVALID = "It has expired or has already been used: each link works once, for a limited time."
CURRENT_WRONG = "The current password is not correct."


@dataclass(frozen=True)
class Letter:
    """A message to write from `templates/mail/<template>.txt` (first line: the subject)."""

    template: str
    to: str
    values: dict[str, str] = field(default_factory=dict)


async def signup(request: Request) -> Response:
    """Create an account and email a verification link; the person is not signed in yet, since
    signing in the new account but not the taken one would tell the two apart."""
    svc = services(request)
    if not svc.settings.signup_enabled:
        raise NotFound("Self-registration is turned off.")
    if request.method == "GET":
        return _signup_form(request, name="", email="")
    form = await _form(request, svc)
    name, email, password = _field(form, "name"), _field(form, "email"), _field(form, "password")
    typed = {"name": name, "email": email, "password_min": users.PASSWORD_MIN}
    refused = await _refuse_ip(request, svc, "signup.html", typed)
    if refused is not None:
        return refused
    try:
        name = _valid_name(name)
        email = users.validate_email(email)
        users.validate_password(password, email=email, name=name)
    except Invalid as exc:
        return _signup_form(request, name=name, email=email, error=exc.detail, status=400)
    password_hash = await run_in_threadpool(svc.passwords.hash, password)
    ip = client_ip(request)
    try:
        letter = await svc.db.run_sync(
            _register, svc, name=name, email=email, password_hash=password_hash, ip=ip
        )
    except Conflict:
        letter = await svc.db.run_sync(_register_taken, svc, email=email, ip=ip)
    return _check_email(request, svc, "signup", letter)


async def verify_email(request: Request) -> Response:
    svc = services(request)
    if request.method == "GET":
        raw_token = request.query_params.get("token", "")
        owner = await svc.db.run_sync(users.link_owner, svc.digester, raw_token, users.VERIFY_EMAIL)
        if owner is None:
            return _link_invalid(request, "/verify-email/resend", "Send a new link")
        context = {"token": raw_token, "email": owner.email}
        return render(request, "verify_email.html", context)
    form = await _form(request, svc)
    verified = await svc.db.run_sync(_verify, svc, _field(form, "token"), ip=client_ip(request))
    if not verified:
        return _link_invalid(request, "/verify-email/resend", "Send a new link")
    return _message(
        request,
        "Email verified",
        "Thank you: your email address is confirmed.",
        action=("/login", "Continue to sign in"),
    )


async def resend_verification(request: Request) -> Response:
    svc = services(request)
    if request.method == "GET":
        return render(request, "resend_verification.html", {"email": ""})
    form = await _form(request, svc)
    email = _field(form, "email")
    typed: dict[str, object] = {"email": email}
    refused = await _refuse_ip(request, svc, "resend_verification.html", typed)
    if refused is not None:
        return refused
    try:
        email = users.validate_email(email)
    except Invalid as exc:
        context = {"email": email, "error": exc.detail}
        return render(request, "resend_verification.html", context, status=400)
    letter = await svc.db.run_sync(_reissue_verification, svc, email)
    return _check_email(request, svc, "resend", letter)


async def reset_password(request: Request) -> Response:
    """Ask for a reset link. The answer is the same for known, unknown and disabled accounts."""
    svc = services(request)
    if request.method == "GET":
        return render(request, "reset_request.html", {"email": ""})
    form = await _form(request, svc)
    email = _field(form, "email")
    refused = await _refuse_ip(request, svc, "reset_request.html", {"email": email})
    if refused is not None:
        return refused
    try:
        email = users.validate_email(email)
    except Invalid as exc:
        return render(
            request, "reset_request.html", {"email": email, "error": exc.detail}, status=400
        )
    letter = await svc.db.run_sync(_request_reset, svc, email, ip=client_ip(request))
    return _check_email(request, svc, "reset", letter)


async def reset_password_confirm(request: Request) -> Response:
    """The emailed link: choose a new password, which ends every session of the account."""
    svc = services(request)
    form = await _form(request, svc) if request.method == "POST" else None
    raw_token = request.query_params.get("token", "") if form is None else _field(form, "token")
    owner = await svc.db.run_sync(users.link_owner, svc.digester, raw_token, users.RESET_PASSWORD)
    if owner is None:
        return _link_invalid(request, "/reset-password", "Request a new link")
    context = {"token": raw_token, "email": owner.email, "password_min": users.PASSWORD_MIN}
    if form is None:
        return render(request, "reset_password.html", context)
    password = _field(form, "password")
    try:
        users.validate_password(password, email=owner.email, name=owner.name)
    except Invalid as exc:
        return render(request, "reset_password.html", {**context, "error": exc.detail}, status=400)
    password_hash = await run_in_threadpool(svc.passwords.hash, password)
    letter = await svc.db.run_sync(
        _reset, svc, raw_token, password_hash=password_hash, ip=client_ip(request)
    )
    if letter is None:
        return _link_invalid(request, "/reset-password", "Request a new link")
    response = _message(
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
    form = await _form(request, svc) if request.method == "POST" else None
    login = await current_login(request)
    user = await svc.db.run_sync(users.get, login.user_id) if login else None
    if login is None or user is None:
        return RedirectResponse("/login", status_code=303)
    if form is None:
        return _change_form(request, user.email)
    current, new = _field(form, "current_password"), _field(form, "new_password")
    try:
        users.validate_password(new, email=user.email, name=user.name)
    except Invalid as exc:
        return _change_form(request, user.email, error=exc.detail, status=400)
    settings, limiter = svc.settings, svc.limiter
    retry_after = await run_in_threadpool(
        limiter.check, "login-account", user.email, settings.login_rate_per_account, ACCOUNT_WINDOW
    )
    if retry_after is not None:
        error = f"Too many attempts. Wait {_duration(retry_after, round_up=True)} and try again."
        headers = {"Retry-After": str(retry_after)}
        return _change_form(request, user.email, error=error, status=429, headers=headers)
    ip = client_ip(request)
    if not await run_in_threadpool(svc.passwords.verify, user.password_hash, current):
        await svc.db.run_sync(
            _audit_own,
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
    response = _message(
        request,
        "Password changed",
        "Your new password is set. Every other device that was signed in has been signed out.",
    )
    return mail_later(request, response, letter)


def _register(services: Services, *, name: str, email: str, password_hash: str, ip: str) -> Letter:
    """Create the account and its verification link; Conflict when the address is taken."""
    user = users.create(email=email, password_hash=password_hash, name=name)
    _audit_own("user.signed_up", user.id, ip=ip)
    return _verification_mail(services, user)


def _register_taken(services: Services, *, email: str, ip: str) -> Letter:
    """The address has an account: tell its owner, who may simply have forgotten it."""
    existing = users.find_by_email(email)
    audit.record(
        "user.signed_up",
        outcome="failure",
        ip=ip,
        target_type="user",
        target_id=existing.id if existing else None,
        reason="email_taken",
    )
    return Letter("account_exists", email)


def _verify(services: Services, raw_token: str, *, ip: str) -> bool:
    user = users.redeem_link(services.digester, raw_token, users.VERIFY_EMAIL)
    if user is None:
        return False
    users.mark_email_verified(user)
    _audit_own("email.verified", user.id, ip=ip)
    return True


def _reissue_verification(services: Services, email: str) -> Letter | None:
    user = users.find_by_email(email)
    if user is None or not user.is_active or user.email_verified:
        return None
    return _verification_mail(services, user)


def _request_reset(services: Services, email: str, *, ip: str) -> Letter | None:
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
    return Letter("reset_password", user.email, {"link": link, "lifetime": _duration(lifetime)})


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
    _audit_own("password.reset", user.id, ip=ip, **ended)
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
    _audit_own("password.changed", user.id, ip=ip, **ended)
    return Letter("password_changed", user.email)


def _audit_own(
    event: str, user_id: str, *, ip: str, outcome: str = "success", **details: object
) -> None:
    """An event a person caused on their own account."""
    audit.record(
        event,
        outcome=outcome,
        actor_type="user",
        actor_id=user_id,
        ip=ip,
        target_type="user",
        target_id=user_id,
        **details,
    )


def _verification_mail(services: Services, user: users.User) -> Letter:
    """A fresh single-use link to confirm the address, in a message to it."""
    settings = services.settings
    raw_token = users.issue_link(
        services.digester,
        user_id=user.id,
        purpose=users.VERIFY_EMAIL,
        lifetime=settings.email_verify_ttl,
    )
    link = f"{settings.issuer}/verify-email?token={raw_token}"
    lifetime = _duration(settings.email_verify_ttl)
    return Letter("verify_email", user.email, {"link": link, "lifetime": lifetime})


def mail_later(request: Request, response: Response, letter: Letter | None) -> Response:
    """Send `letter` once `response` has gone out (so after the commit), in the threadpool."""
    if letter is not None:
        templates = request.app.state.templates.env
        response.background = BackgroundTask(_send, services(request), templates, letter)
    return response


def _send(services: Services, templates: Environment, letter: Letter) -> None:
    """Write and send a letter, at most `mail_rate_per_address` per address and hour, so
    nobody can make the server flood someone's mailbox. Past the limit the page still reads
    the same; the mail is just not sent."""
    limit = services.settings.mail_rate_per_address
    if services.limiter.check("mail-address", letter.to, limit, HOUR) is not None:
        log.warning("mail not sent: over %d messages to one address this hour", limit)
        return
    template = templates.get_template(f"mail/{letter.template}.txt")
    written = template.render(issuer=services.settings.issuer, **letter.values)
    subject, _, text = written.partition("\n\n")
    outbound.deliver(services.mailer, Mail(letter.to, subject, text + "\n"))


async def _refuse_ip(
    request: Request, services: Services, template: str, context: dict[str, object]
) -> Response | None:
    """429 once an IP has asked for more sign-ups or emailed links than the hourly limit; the
    same for everyone, so it says nothing about accounts."""
    limit = services.settings.mail_rate_per_ip
    retry_after = await run_in_threadpool(
        services.limiter.check, "mail-ip", client_ip(request), limit, HOUR
    )
    if retry_after is None:
        return None
    error = f"Too many requests from your network. Wait {_duration(retry_after, round_up=True)}."
    headers = {"Retry-After": str(retry_after)}
    return render(request, template, {**context, "error": error}, status=429, headers=headers)


def _check_email(
    request: Request, services: Services, kind: str, letter: Letter | None
) -> Response:
    """The one answer to every request that may send mail (`kind`: signup, reset or resend).
    It has no form and does not repeat the address, so the answers for a registered and an
    unknown address are byte for byte the same."""
    lifetime = _duration(services.settings.password_reset_ttl)
    response = render(request, "check_email.html", {"kind": kind, "lifetime": lifetime})
    return mail_later(request, response, letter)


def _signup_form(
    request: Request, *, name: str, email: str, error: str | None = None, status: int = 200
) -> Response:
    context = {"name": name, "email": email, "error": error, "password_min": users.PASSWORD_MIN}
    return render(request, "signup.html", context, status=status)


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


def _link_invalid(request: Request, href: str, label: str) -> Response:
    return _message(
        request,
        "This link can't be used",
        LINK_INVALID,
        action=(href, label),
        status=400,
        alert=True,
    )


def _message(
    request: Request,
    title: str,
    text: str,
    *,
    action: tuple[str, str] | None = None,
    status: int = 200,
    alert: bool = False,
) -> Response:
    context = {"title": title, "text": text, "action": action, "alert": alert}
    return render(request, "message.html", context, status=status)


async def _form(request: Request, services: Services) -> FormData:
    """The posted form, once its CSRF token checks out (403 otherwise, before anything else)."""
    form = await request.form()
    services.csrf.verify(request, _field(form, CSRF_FIELD))
    return form


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise Invalid("Enter your name.")
    if len(name) > NAME_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise Invalid(f"The name must be at most {NAME_MAX} printable characters.")
    return name


def _duration(seconds: int, *, round_up: bool = False) -> str:
    """Seconds in words for people: '30 minutes', '24 hours', 'a minute'."""
    if seconds >= HOUR and (seconds % HOUR == 0 or round_up):
        count, unit = math.ceil(seconds / HOUR), "hour"
    else:
        count, unit = max(1, math.ceil(seconds / 60)), "minute"
    return f"a{'n' if unit == 'hour' else ''} {unit}" if count == 1 else f"{count} {unit}s"
