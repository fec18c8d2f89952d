"""Sign-up and email verification: /signup, /verify-email and /verify-email/resend.

An address that already has an account gets the same page as a new one, and its owner a
note instead of a link (docs/security.md I72; the shared rules in `users.self_service`).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from authserver import audit
from authserver.errors import Conflict, Invalid, NotFound
from authserver.rendering import message, render
from authserver.services import Services, services
from authserver.users import models as users
from authserver.users.self_service import (
    Letter,
    audit_own,
    check_email,
    duration,
    link_by_email,
    link_invalid,
    posted_form,
    refuse_ip,
)
from authserver.web import client_ip

NAME_MAX = 200


async def signup(request: Request) -> Response:
    """Create an account and email a verification link; the person is not signed in yet, since
    signing in the new account but not the taken one would tell the two apart."""
    svc = services(request)
    if not svc.settings.signup_enabled:
        raise NotFound("Self-registration is turned off.")
    if request.method == "GET":
        return _signup_form(request, name="", email="")
    form = await posted_form(request, svc)
    name, email = form.get("name", ""), form.get("email", "")
    password = form.get("password", "")
    typed = {"name": name, "email": email, "password_min": users.PASSWORD_MIN}
    refused = await refuse_ip(request, svc, "signup.html", typed)
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
    return check_email(request, svc, "signup", letter)


async def verify_email(request: Request) -> Response:
    svc = services(request)
    if request.method == "GET":
        raw_token = request.query_params.get("token", "")
        owner = await svc.db.run_sync(users.link_owner, svc.digester, raw_token, users.VERIFY_EMAIL)
        if owner is None:
            return link_invalid(request, "/verify-email/resend", "Send a new link")
        context = {"token": raw_token, "email": owner.email}
        return render(request, "verify_email.html", context)
    form = await posted_form(request, svc)
    verified = await svc.db.run_sync(_verify, svc, form.get("token", ""), ip=client_ip(request))
    if not verified:
        return link_invalid(request, "/verify-email/resend", "Send a new link")
    return message(
        request,
        "Email verified",
        "Thank you: your email address is confirmed.",
        action=("/login", "Continue to sign in"),
    )


async def resend_verification(request: Request) -> Response:
    return await link_by_email(request, "resend_verification.html", "resend", _reissue_verification)


def _register(services: Services, *, name: str, email: str, password_hash: str, ip: str) -> Letter:
    """Create the account and its verification link; Conflict when the address is taken."""
    user = users.create(email=email, password_hash=password_hash, name=name)
    audit_own("user.signed_up", user.id, ip=ip)
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
    audit_own("email.verified", user.id, ip=ip)
    return True


def _reissue_verification(services: Services, email: str, ip: str) -> Letter | None:
    user = users.find_by_email(email)
    if user is None or not user.is_active or user.email_verified:
        return None
    return _verification_mail(services, user)


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
    lifetime = duration(settings.email_verify_ttl)
    return Letter("verify_email", user.email, {"link": link, "lifetime": lifetime})


def _signup_form(
    request: Request, *, name: str, email: str, error: str | None = None, status: int = 200
) -> Response:
    context = {"name": name, "email": email, "error": error, "password_min": users.PASSWORD_MIN}
    return render(request, "signup.html", context, status=status)


def _valid_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise Invalid("Enter your name.")
    if len(name) > NAME_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise Invalid(f"The name must be at most {NAME_MAX} printable characters.")
    return name
