"""Sign-in: the /login page, the session cookie, and `current_login` for other pages.

POST /login walks one path (STYLE.md §4 step 2): CSRF → rate limits → authenticate → a fresh
session → audit → 303. Every failure a visitor can cause (unknown email, wrong password,
disabled account) gets the same answer, and the cookie carries only the session's random id.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import audit
from authserver.federation import buttons as federation
from authserver.mfa import policy
from authserver.mfa.policy import ACR_PWD
from authserver.rendering import render
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.settings import Settings
from authserver.users import models as users
from authserver.web import CSRF_FIELD, client_ip, read_form

LANDING = "/login"
IP_WINDOW = 60
ACCOUNT_WINDOW = 15 * 60
#: The longest `next` kept through sign-in: the app's URL limit (BodySizeLimitMiddleware), so
#: no authorization request the app accepted is lost on the way.
NEXT_MAX = 8192
INTERNAL_TARGETS = ("/account", "/account/password", "/device")
FAILED = "Incorrect email or password."
TOO_MANY = "Too many sign-in attempts. Wait {minutes} and try again."
#: `_open_session`'s answer for a right password whose email address is not verified yet.
UNVERIFIED = "unverified"
VERIFY_FIRST = {
    "title": "Verify your email address first",
    "text": "Your email address is not verified yet. Open the link in the message we sent "
    "you, then sign in again. No message? Ask for a new link.",
    "action": ("/verify-email/resend", "Send a new link"),
    "alert": True,
}


async def current_login(request: Request) -> LoginSession | None:
    """The browser's live session, or None (no cookie, ended, expired, or user disabled)."""
    svc = services(request)
    raw_sid = request.cookies.get(sessions.cookie_name(svc.settings))
    if not raw_sid:
        return None
    return await svc.db.run_sync(sessions.find_active, svc.digester, svc.settings, raw_sid)


def set_session_cookie(response: Response, settings: Settings, raw_sid: str) -> None:
    """docs/security.md H61: `__Host-` under https, HttpOnly, Secure, Path=/, and SameSite=Lax (an
    RP's top-level redirect back to /authorize must still carry it). No Max-Age: the server
    decides when a session ends; the browser forgets the cookie when it closes."""
    response.set_cookie(
        sessions.cookie_name(settings),
        raw_sid,
        httponly=True,
        secure=settings.is_https,
        samesite="lax",
        path="/",
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        sessions.cookie_name(settings),
        httponly=True,
        secure=settings.is_https,
        samesite="lax",
        path="/",
    )


def safe_next(value: str | None) -> str | None:
    """`value` when it is this server's own /authorize request, the device page or the
    account page, else None (docs/security.md H67).

    Only a same-origin path is accepted, so the sign-in page cannot be an open redirector:
    `//evil.com`, `https://evil.com`, `/\\evil.com`, `%2F%2Fevil.com` and `javascript:` all
    fail the prefix test, and control characters could split the Location header.
    """
    if value in INTERNAL_TARGETS:
        return value
    if not value or len(value) > NEXT_MAX or not value.startswith(("/authorize?", "/device?")):
        return None
    if "\\" in value or any(ord(ch) < 33 or ord(ch) == 127 for ch in value):
        return None
    return value


async def login(request: Request) -> Response:
    await services(request).federation.prefetch()
    if request.method == "POST":
        return await _sign_in(request)
    next_url = safe_next(request.query_params.get("next"))
    if next_url is None:
        signed_in = await _signed_in_user(request)
        if signed_in is not None:
            return render(request, "login.html", {"signed_in_as": signed_in.email})
    hinted = federation.hinted(request, next_url)
    if hinted is not None:
        return hinted
    hint = request.query_params.get("login_hint") or _login_hint_of(next_url)
    return _login_form(request, email=_printable(hint, users.EMAIL_MAX), next_url=next_url)


async def _sign_in(request: Request) -> Response:
    svc = services(request)
    settings = svc.settings
    form = await read_form(request)
    svc.csrf.verify(request, form.get(CSRF_FIELD))
    email = _printable(form.get("email", ""), users.EMAIL_MAX)
    password = form.get("password", "")
    next_url = safe_next(form.get("next"))
    ip = client_ip(request)
    account = users.normalize_email(email)

    retry_after = await run_in_threadpool(_over_limit, svc, ip, account)
    if retry_after is not None:
        minutes = math.ceil(retry_after / 60)
        wait = "a minute" if minutes == 1 else f"{minutes} minutes"
        return _login_form(
            request,
            email=email,
            next_url=next_url,
            error=TOO_MANY.format(minutes=wait),
            status=429,
            headers={"Retry-After": str(retry_after)},
        )

    candidate = await svc.db.run_sync(users.sign_in_candidate, email)
    user_id = await run_in_threadpool(users.check_password, svc.passwords, candidate, password)
    new_hash = None
    if user_id is not None and svc.passwords.needs_rehash(candidate.password_hash or ""):
        new_hash = await run_in_threadpool(svc.passwords.hash, password)
    opened = await svc.db.run_sync(
        _open_session,
        svc,
        email=email,
        acr_values=policy.acr_values_of(next_url),
        candidate=candidate if user_id is not None else None,
        new_hash=new_hash,
        previous_sid=request.cookies.get(sessions.cookie_name(settings)),
        ip=ip,
        user_agent=request.headers.get("user-agent", ""),
    )
    if opened is None:
        return _login_form(request, email=email, next_url=next_url, error=FAILED, status=400)
    await run_in_threadpool(svc.limiter.forgive, "login-account", account, ACCOUNT_WINDOW)
    if isinstance(opened, str):
        return render(request, "message.html", VERIFY_FIRST, status=403)
    raw_sid, awaiting_factor = opened
    target = next_url or LANDING
    if awaiting_factor:
        target = policy.factor_url(next_url or "/account")
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, settings, raw_sid)
    return response


def _over_limit(services: Services, ip: str, account: str) -> int | None:
    """Seconds to wait, or None. Every attempt counts against both limits before the password
    is checked, so parallel guesses cannot slip through, and a right password over the
    account limit is refused like a wrong one: the limit is no oracle (docs/security.md I71). The
    account lock is soft: it lifts when the window ends, so a victim waits minutes, not days.
    Refused by the IP limit, an attempt does not count against the account."""
    limiter, settings = services.limiter, services.settings
    retry_after = limiter.check("login-ip", ip, settings.login_rate_per_ip, IP_WINDOW)
    if retry_after is None:
        retry_after = limiter.check(
            "login-account", account, settings.login_rate_per_account, ACCOUNT_WINDOW
        )
    return retry_after


def _open_session(
    services: Services,
    *,
    email: str,
    candidate: users.Candidate | None,
    new_hash: str | None,
    previous_sid: str | None,
    ip: str,
    user_agent: str,
    acr_values: str | None = None,
) -> tuple[str, bool] | str | None:
    """Start a session for a checked password under a brand-new id (no fixation, H63); the
    browser's previous session, if any, ends. With no candidate, record the failure.
    Returns the raw cookie value and whether the session still awaits a second factor
    (`mfa.pages.needs_second_step`), or None; `UNVERIFIED` (and no session) for the right
    password of an unverified address when `AUTHSERVER_REQUIRE_VERIFIED_EMAIL` is on."""
    user = users.get(candidate.user_id) if candidate and candidate.user_id else None
    if (
        user is not None
        and candidate is not None
        and (not user.is_active or user.password_hash != candidate.password_hash)
    ):
        user = None
    if user is None:
        known = users.find_by_email(email)
        if known is None:
            reason = "unknown_account"
        else:
            reason = "bad_password" if known.is_active else "account_disabled"
        audit.record(
            "login.failed",
            outcome="failure",
            actor_type="user",
            actor_id=known.id if known else None,
            ip=ip,
            target_type="user" if known else None,
            target_id=known.id if known else None,
            reason=reason,
        )
        return None
    if new_hash is not None and user.password_hash is not None:
        users.upgrade_hash(user.id, user.password_hash, new_hash)
    if services.settings.require_verified_email and not user.email_verified:
        audit.record(
            "login.failed",
            outcome="failure",
            actor_type="user",
            actor_id=user.id,
            ip=ip,
            target_type="user",
            target_id=user.id,
            reason="email_unverified",
        )
        return UNVERIFIED
    previous = sessions.find_active(services.digester, services.settings, previous_sid, touch=False)
    if previous is not None:
        sessions.end(services.app_access, previous.id)
    awaiting = policy.needs_second_step(services.settings, user.id, acr_values)
    login_session, raw_sid = sessions.start(
        services.digester,
        services.settings,
        user_id=user.id,
        user_agent=user_agent,
        ip=ip,
        acr=ACR_PWD,
        awaiting_factor=awaiting,
    )
    audit.record(
        "login.password_accepted" if awaiting else "login.succeeded",
        actor_type="user",
        actor_id=user.id,
        ip=ip,
        target_type="session",
        target_id=login_session.id,
    )
    return raw_sid, awaiting


async def _signed_in_user(request: Request) -> users.User | None:
    svc = services(request)
    login_session = await current_login(request)
    if login_session is None:
        return None
    return await svc.db.run_sync(users.get, login_session.user_id)


def _login_form(
    request: Request,
    *,
    email: str,
    next_url: str | None,
    error: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    context = {
        "email": email,
        "next": next_url,
        "error": error,
        "providers": federation.choices(request, next_url, email),
    }
    return render(request, "login.html", context, status=status, headers=headers)


def _printable(value: str, limit: int) -> str:
    """`value` if it could be an email address at all; else empty, which matches no account.

    Control characters are refused here rather than sent to the database (PostgreSQL rejects
    NUL), and an over-long value is refused whole: cut short, it might match another account.
    """
    if len(value) > limit or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return ""
    return value


def _login_hint_of(next_url: str | None) -> str:
    """OIDC `login_hint` from the pending authorization request, to pre-fill Email."""
    if next_url is None:
        return ""
    return parse_qs(urlsplit(next_url).query).get("login_hint", [""])[0]
