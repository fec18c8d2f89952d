"""The pages and browser endpoints of second factors and passkeys.

- `/login/factor`: the second step after a right password (or a step-up of a session that
  has a password only): an authenticator app code, a passkey, or a recovery code. A session
  awaiting it is no session yet: `/authorize` and `/account` do not see it.
- `/login/passkey/options` and `/login/passkey`: sign in with a passkey (a first factor,
  user verification required), or use one as the second step.
- `/account/...`: enrol an authenticator app (QR code, secret shown once, confirmed by a
  code), add, list and remove passkeys, make recovery codes, require the second factor.

The JSON endpoints are called by `/static/passkeys.js`: CSRF-checked like forms (the token
travels in `X-CSRF-Token`), and each challenge is bound to the browser by a cookie whose
digest the challenge row keeps, expires in minutes and is consumed once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.structs import CredentialDeviceType

from authserver import audit, rest
from authserver.db import utcnow
from authserver.errors import NO_STORE, Forbidden, Invalid, TooManyRequests
from authserver.mfa import models, policy, recovery, totp
from authserver.mfa import webauthn as passkeys
from authserver.mfa.models import Passkey
from authserver.rendering import render
from authserver.security import new_token
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.sessions.pages import IP_WINDOW, safe_next, set_session_cookie
from authserver.users import models as users
from authserver.users.self_service import Letter, mail_later
from authserver.web import CSRF_FIELD, client_ip, cookie_name, read_form

MULTI_DEVICE = CredentialDeviceType.MULTI_DEVICE
#: Second-step guesses per account (all methods together) per window: a 6-digit code
#: cannot be found by guessing within the limit (docs/security.md I71).
ATTEMPTS = 5
WINDOW = 15 * 60
WRONG_CODE = "That code is not right, or it was used already."
TOO_MANY = "Too many attempts. Wait {minutes} and try again."
CHALLENGE_COOKIE = "webauthn"
CSRF_HEADER = "x-csrf-token"
PASSKEY_NAME_MAX = 100
REGISTER = "register"
AUTHENTICATE = "authenticate"
JSON_MAX = 32 * 1024
ACCOUNT_NOTICES = {
    "totp_enrolled": "Your authenticator app is set up.",
    "totp_removed": "The authenticator app was removed.",
    "passkey_added": "Your passkey was added.",
    "passkey_removed": "The passkey was removed.",
    "required_on": "Your second factor will be asked for at every sign-in.",
    "required_off": "Your second factor will be asked for only when an app needs it.",
    "need_factor": "Set up an authenticator app or a passkey first.",
}


def issuer_name(services: Services) -> str:
    return urlsplit(services.settings.issuer).netloc


# -- the second step --------------------------------------------------------------------------


async def open_login(request: Request) -> LoginSession | None:
    """The browser's session, live or still awaiting its second factor."""
    svc = services(request)
    raw_sid = request.cookies.get(sessions.cookie_name(svc.settings))
    if not raw_sid:
        return None
    return await svc.db.run_sync(
        sessions.find_active, svc.digester, svc.settings, raw_sid, awaiting=True
    )


@dataclass(frozen=True)
class Choices:
    totp: bool
    passkeys: bool
    recovery_codes: int


def _choices(user_id: str) -> Choices:
    factor = models.totp_of(user_id)
    return Choices(
        totp=factor is not None and factor.confirmed_at is not None,
        passkeys=bool(models.passkeys_of(user_id)),
        recovery_codes=models.recovery_codes_left(user_id),
    )


async def second_factor(request: Request) -> Response:
    """GET shows the second step; POST checks an app code or a recovery code."""
    svc = services(request)
    form = await read_form(request) if request.method == "POST" else {}
    if request.method == "POST":
        svc.csrf.verify(request, form.get(CSRF_FIELD))
    next_url = safe_next(form.get("next") if form else request.query_params.get("next"))
    login = await open_login(request)
    if login is None:
        query = urlencode({"next": next_url}) if next_url else ""
        return RedirectResponse("/login" + (f"?{query}" if query else ""), status_code=303)
    if request.method == "GET":
        return await _factor_form(request, login, next_url)
    method = form.get("method", "")
    if method not in (policy.OTP, policy.RECOVERY_CODE):
        raise Invalid("Choose how to confirm it is you.")
    retry_after = await run_in_threadpool(
        svc.limiter.check, "mfa-account", login.user_id, ATTEMPTS, WINDOW
    )
    if retry_after is not None:
        minutes = math.ceil(retry_after / 60)
        wait = "a minute" if minutes == 1 else f"{minutes} minutes"
        return await _factor_form(
            request,
            login,
            next_url,
            error=TOO_MANY.format(minutes=wait),
            status=429,
            headers={"Retry-After": str(retry_after)},
        )
    outcome = await svc.db.run_sync(
        _check_code, svc, login, method, form.get("code", ""), client_ip(request)
    )
    if outcome is None:
        return await _factor_form(request, login, next_url, error=WRONG_CODE, status=400)
    await run_in_threadpool(svc.limiter.forgive, "mfa-account", login.user_id, WINDOW)
    response = RedirectResponse(next_url or "/account", status_code=303)
    if method == policy.RECOVERY_CODE:
        email, left = outcome
        letter = Letter("recovery_code_used", email, {"left": str(left)})
        return mail_later(request, response, letter)
    return response


def _check_code(
    services: Services, login: LoginSession, method: str, code: str, ip: str
) -> tuple[str, int] | None:
    """Check the code and complete the session in one transaction; for a recovery code,
    (the address to tell, codes left)."""
    user_id = login.user_id
    if method == policy.OTP:
        ok = totp.check(services.digester, user_id, code)
        added = [policy.OTP]
    else:
        ok = recovery.spend(services.digester, user_id, code)
        added = []
    if not ok:
        audit.record(
            "login.second_factor_failed", outcome="failure", actor_type="user",
            actor_id=user_id, ip=ip, target_type="session", target_id=login.id, method=method,
        )  # fmt: skip
        return None
    _complete(login, added, method, ip)
    user = users.get(user_id)
    assert user is not None
    if method == policy.RECOVERY_CODE:
        left = models.recovery_codes_left(user_id)
        audit.record(
            "mfa.recovery_code_used", actor_type="user", actor_id=user_id, ip=ip,
            target_type="user", target_id=user_id, codes_left=left,
        )  # fmt: skip
        return user.email, left
    return user.email, 0


def _complete(login: LoginSession, added: list[str], method: str, ip: str) -> None:
    amr = policy.with_factor(login.amr, added)
    column = policy.FACTOR_COLUMNS[method]
    acr = policy.acr_for(amr)
    if not sessions.complete_factor(login.id, amr=amr, acr=acr, factor_column=column):
        raise Forbidden("This sign-in has ended. Sign in again.")
    audit.record(
        "login.second_factor", actor_type="user", actor_id=login.user_id, ip=ip,
        target_type="session", target_id=login.id, method=method,
    )  # fmt: skip


async def _factor_form(
    request: Request,
    login: LoginSession,
    next_url: str | None,
    *,
    error: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    svc = services(request)
    choices = await svc.db.run_sync(_choices, login.user_id)
    context = {"title": "Confirm it is you", "choices": choices, "next": next_url, "error": error}
    return render(request, "second_factor.html", context, status=status, headers=headers)


# -- passkeys: sign-in and second step ------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    svc = services(request)
    svc.csrf.verify(request, request.headers.get(CSRF_HEADER))
    body = await request.body()
    if len(body) > JSON_MAX:
        raise Invalid("The request is too large.")
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise Invalid("The request is not JSON.") from None
    if not isinstance(value, dict):
        raise Invalid("The request is not a JSON object.")
    return value


def _ticket(body: dict[str, Any]) -> str:
    """The challenge's id as sent back; anything no row could have is refused here (the
    database might refuse a NUL with an error rather than find nothing)."""
    ticket = body.get("ticket")
    if not isinstance(ticket, str) or not 0 < len(ticket) <= 36 or not ticket.isprintable():
        raise Invalid("Send the ticket and the credential.")
    return ticket


def _binding_cookie(services: Services) -> str:
    return cookie_name(CHALLENGE_COOKIE, services.settings.is_https)


def _with_challenge(services: Services, body: dict[str, Any], ticket: str, raw: str) -> Response:
    response = JSONResponse({**body, "ticket": ticket}, headers=NO_STORE)
    response.set_cookie(
        _binding_cookie(services),
        raw,
        max_age=passkeys.CHALLENGE_TTL,
        httponly=True,
        secure=services.settings.is_https,
        samesite="strict",
        path="/",
    )
    return response


async def passkey_options(request: Request) -> Response:
    """Options for navigator.credentials.get: for the second step (`mode: second_step`,
    sent by the second-step page), the person's own passkeys; otherwise any passkey of this
    site, with user verification."""
    svc = services(request)
    body = await _json_body(request)
    stepping_up = body.get("mode") == "second_step"
    login = await open_login(request) if stepping_up else None
    if stepping_up and login is None:
        raise Forbidden("This sign-in has ended. Sign in again.")
    raw = new_token()

    def prepare() -> tuple[dict[str, Any], str]:
        allowed = models.passkeys_of(login.user_id) if login is not None and stepping_up else None
        if allowed is not None and not allowed:
            raise Invalid("You have no passkey yet.")
        options, challenge = passkeys.authentication_options(svc.settings, allowed)
        ticket = models.save_challenge(
            purpose=AUTHENTICATE,
            binding=svc.digester.digest(CHALLENGE_COOKIE, raw),
            challenge=challenge,
            user_id=login.user_id if login is not None and stepping_up else None,
            ttl=passkeys.CHALLENGE_TTL,
        )
        return options, ticket

    options, ticket = await svc.db.run_sync(prepare)
    return _with_challenge(svc, {"publicKey": options}, ticket, raw)


async def passkey_sign_in(request: Request) -> Response:
    """Check an assertion: as the second step of the browser's session when the challenge
    was made for one, else as a sign-in of its own, which opens a fresh session."""
    svc = services(request)
    body = await _json_body(request)
    ticket, credential = _ticket(body), body.get("credential")
    if not isinstance(credential, dict):
        raise Invalid("Send the ticket and the credential.")
    next_url = safe_next(body.get("next") if isinstance(body.get("next"), str) else None)
    raw = request.cookies.get(_binding_cookie(svc), "")
    ip = client_ip(request)
    retry_after = await run_in_threadpool(
        svc.limiter.check, "login-ip", ip, svc.settings.login_rate_per_ip, IP_WINDOW
    )
    if retry_after is not None:
        raise TooManyRequests("Too many sign-in attempts.", retry_after=retry_after)
    login = await open_login(request)
    previous_sid = request.cookies.get(sessions.cookie_name(svc.settings))
    raw_sid = await svc.db.run_sync(
        _passkey_unit,
        svc,
        ticket,
        svc.digester.digest(CHALLENGE_COOKIE, raw) if raw else "",
        credential,
        login,
        previous_sid,
        ip,
        request.headers.get("user-agent", ""),
    )
    response = JSONResponse({"redirect": next_url or "/account"}, headers=NO_STORE)
    if raw_sid is not None:
        set_session_cookie(response, svc.settings, raw_sid)
    response.delete_cookie(_binding_cookie(svc), path="/")
    return response


def _passkey_unit(
    services: Services,
    ticket: str,
    binding: str,
    credential: dict[str, Any],
    login: LoginSession | None,
    previous_sid: str | None,
    ip: str,
    user_agent: str,
) -> str | None:
    """Returns the new session's raw cookie value for a first-factor sign-in, None for a
    completed second step; raises for anything refused (the same answer for all)."""
    refused = Forbidden("That passkey could not be used. Try again.")
    challenge = models.consume_challenge(ticket, purpose=AUTHENTICATE, binding=binding)
    if challenge is None:
        raise refused
    try:
        passkey = models.passkey_by_credential(passkeys.credential_id_of(credential))
    except passkeys.PasskeyRefused:
        raise refused from None
    second_step = challenge.user_id is not None
    if passkey is None or (second_step and passkey.user_id != challenge.user_id):
        raise refused
    if second_step and (login is None or login.user_id != challenge.user_id):
        raise refused
    user = users.get(passkey.user_id)
    if user is None or not user.is_active:
        raise refused
    try:
        verified = passkeys.verify_authentication(
            services.settings,
            credential,
            challenge.challenge,
            passkey,
            require_user_verification=not second_step,
        )
    except passkeys.PasskeyRefused:
        audit.record(
            "login.failed", outcome="failure", actor_type="user", actor_id=user.id, ip=ip,
            target_type="user", target_id=user.id, reason="bad_passkey",
        )  # fmt: skip
        raise refused from None
    models.record_passkey_use(passkey.id, verified.new_sign_count, verified.credential_backed_up)
    methods = policy.passkey_methods(passkey.backup_eligible)
    if second_step:
        assert login is not None
        _complete(login, methods, "passkey", ip)
        return None
    if services.settings.require_verified_email and not user.email_verified:
        raise Forbidden("Verify your email address first, then sign in again.")
    previous = sessions.find_active(services.digester, services.settings, previous_sid, touch=False)
    if previous is not None:
        sessions.end(services.app_access, previous.id)
    amr = policy.with_factor("", methods)
    now = utcnow()
    login_session, raw_sid = sessions.start(
        services.digester, services.settings, user_id=user.id, user_agent=user_agent, ip=ip,
        amr=amr, acr=policy.acr_for(amr), factor_times={"passkey_at": now}, now=now,
    )  # fmt: skip
    audit.record(
        "login.succeeded", actor_type="user", actor_id=user.id, ip=ip,
        target_type="session", target_id=login_session.id, method="passkey",
    )  # fmt: skip
    return raw_sid


# -- the account page -----------------------------------------------------------------------


def account_view(user_id: str) -> dict[str, Any]:
    """What /account shows about second factors."""
    factor = models.totp_of(user_id)
    return {
        "totp": factor is not None and factor.confirmed_at is not None,
        "passkeys": [
            {
                "id": p.id,
                "name": p.name,
                "added": f"{p.created_at:%d %B %Y}",
                "synced": p.backed_up,
                "last_used": f"{p.last_used_at:%d %B %Y}" if p.last_used_at else "never",
            }
            for p in models.passkeys_of(user_id)
        ],
        "recovery_codes": models.recovery_codes_left(user_id),
        "required": models.person_requires(user_id),
    }


async def _account_post(
    request: Request,
) -> tuple[Services, LoginSession, dict[str, str]] | Response:
    """The signed-in person's form, or where to send them first: to sign in, or, when they
    have a second factor and this session was made without it, to the second step. A
    stolen password alone must not add a passkey, remove the app or turn the factor off."""
    svc = services(request)
    form = await read_form(request)
    svc.csrf.verify(request, form.get(CSRF_FIELD))
    raw_sid = request.cookies.get(sessions.cookie_name(svc.settings))
    login = await svc.db.run_sync(sessions.find_active, svc.digester, svc.settings, raw_sid)
    if login is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    if await svc.db.run_sync(_lacks_factor, login):
        return RedirectResponse(policy.factor_url("/account"), status_code=303)
    return svc, login, form


def _lacks_factor(login: LoginSession) -> bool:
    """The person has a second factor and this session was made without it."""
    return "mfa" not in login.amr.split() and models.has_factor(login.user_id)


def _record(login: LoginSession, ip: str, event: str, **details: Any) -> None:
    audit.record(
        event, actor_type="user", actor_id=login.user_id, ip=ip, target_type="user",
        target_id=login.user_id, via="account_page", **details,
    )  # fmt: skip


async def totp_start(request: Request) -> Response:
    """A new secret for an authenticator app, shown once as a QR code and as text."""
    posted = await _account_post(request)
    if isinstance(posted, Response):
        return posted
    services, login, _ = posted
    secret = totp.new_secret()

    def start() -> str | None:
        if models.totp_of(login.user_id) is not None and _choices(login.user_id).totp:
            return None
        models.start_totp(login.user_id, totp.encrypt(services.digester, login.user_id, secret))
        user = users.get(login.user_id)
        assert user is not None
        return user.email

    email = await services.db.run_sync(start)
    if email is None:
        return RedirectResponse("/account", status_code=303)
    return _enrol_page(request, services, secret, email)


def _enrol_page(
    request: Request,
    services: Services,
    secret: bytes,
    email: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    uri = totp.provisioning_uri(secret, email, issuer_name(services))
    context = {
        "title": "Set up an authenticator app",
        "qr": totp.qr_data_url(uri),
        "secret": totp.as_base32(secret),
        "error": error,
    }
    return render(request, "totp_enrol.html", context, status=status)


async def totp_confirm(request: Request) -> Response:
    posted = await _account_post(request)
    if isinstance(posted, Response):
        return posted
    services, login, form = posted
    ip = client_ip(request)
    retry_after = await run_in_threadpool(
        services.limiter.check, "mfa-account", login.user_id, ATTEMPTS, WINDOW
    )
    if retry_after is not None:
        raise TooManyRequests("Too many attempts. Try again later.", retry_after=retry_after)

    def confirm() -> tuple[bytes, str] | None:
        if totp.check(services.digester, login.user_id, form.get("code", ""), confirm=True):
            _record(login, ip, "mfa.totp_enrolled")
            _complete(login, [policy.OTP], policy.OTP, ip)
            return None
        factor = models.totp_of(login.user_id)
        user = users.get(login.user_id)
        if factor is None or factor.confirmed_at is not None or user is None:
            raise Invalid("Start the setup again from your account page.")
        secret = totp.decrypt(services.digester, login.user_id, factor.secret)
        if secret is None:
            raise Invalid("Start the setup again from your account page.")
        return secret, user.email

    again = await services.db.run_sync(confirm)
    if again is not None:
        return _enrol_page(request, services, *again, error=WRONG_CODE, status=400)
    await run_in_threadpool(services.limiter.forgive, "mfa-account", login.user_id, WINDOW)
    return RedirectResponse("/account?done=totp_enrolled", status_code=303)


async def totp_remove(request: Request) -> Response:
    posted = await _account_post(request)
    if isinstance(posted, Response):
        return posted
    services, login, _ = posted
    ip = client_ip(request)

    def remove() -> None:
        if models.remove_totp(login.user_id):
            _record(login, ip, "mfa.totp_removed")

    await services.db.run_sync(remove)
    return RedirectResponse("/account?done=totp_removed", status_code=303)


async def recovery_codes(request: Request) -> Response:
    """A new set of recovery codes, shown once; the old set stops working."""
    posted = await _account_post(request)
    if isinstance(posted, Response):
        return posted
    services, login, _ = posted
    ip = client_ip(request)

    def regenerate() -> list[str]:
        codes = recovery.regenerate(services.digester, login.user_id)
        _record(login, ip, "mfa.recovery_codes_generated")
        return codes

    codes = await services.db.run_sync(regenerate)
    return render(request, "recovery_codes.html", {"title": "Recovery codes", "codes": codes})


async def require_factor(request: Request) -> Response:
    posted = await _account_post(request)
    if isinstance(posted, Response):
        return posted
    services, login, form = posted
    wanted = form.get("required") == "on"
    ip = client_ip(request)

    def change() -> str:
        if wanted and not models.has_factor(login.user_id):
            return "need_factor"
        models.set_person_requires(login.user_id, wanted)
        _record(login, ip, "mfa.required_changed", required=wanted)
        return "required_on" if wanted else "required_off"

    done = await services.db.run_sync(change)
    return RedirectResponse(f"/account?done={done}", status_code=303)


async def passkey_remove(request: Request) -> Response:
    posted = await _account_post(request)
    if isinstance(posted, Response):
        return posted
    services, login, _ = posted
    passkey_id = rest.path_id(request, "passkey_id")
    ip = client_ip(request)

    def remove() -> None:
        if models.remove_passkey(login.user_id, passkey_id):
            _record(login, ip, "mfa.passkey_removed", passkey_id=passkey_id)

    await services.db.run_sync(remove)
    return RedirectResponse("/account?done=passkey_removed", status_code=303)


async def passkey_register_options(request: Request) -> Response:
    svc = services(request)
    await _json_body(request)
    login = await _live_login(request)
    raw = new_token()

    def prepare() -> tuple[dict[str, Any], str]:
        user = users.get(login.user_id)
        assert user is not None
        options, challenge = passkeys.registration_options(
            svc.settings,
            user_id=user.id,
            email=user.email,
            name=user.name,
            existing=models.passkeys_of(user.id),
        )
        ticket = models.save_challenge(
            purpose=REGISTER,
            binding=svc.digester.digest(CHALLENGE_COOKIE, raw),
            challenge=challenge,
            user_id=user.id,
            ttl=passkeys.CHALLENGE_TTL,
        )
        return options, ticket

    options, ticket = await svc.db.run_sync(prepare)
    return _with_challenge(svc, {"publicKey": options}, ticket, raw)


async def passkey_register(request: Request) -> Response:
    svc = services(request)
    body = await _json_body(request)
    login = await _live_login(request)
    ticket, credential, name = _ticket(body), body.get("credential"), body.get("name")
    if not isinstance(credential, dict):
        raise Invalid("Send the ticket and the credential.")
    if not isinstance(name, str) or not name.strip() or not name.isprintable():
        name = "Passkey"
    raw = request.cookies.get(_binding_cookie(svc), "")
    ip = client_ip(request)

    def register() -> None:
        binding = svc.digester.digest(CHALLENGE_COOKIE, raw) if raw else ""
        challenge = models.consume_challenge(ticket, purpose=REGISTER, binding=binding)
        if challenge is None or challenge.user_id != login.user_id:
            raise Forbidden("This passkey setup has expired. Try again.")
        try:
            verified = passkeys.verify_registration(svc.settings, credential, challenge.challenge)
        except passkeys.PasskeyRefused:
            raise Forbidden("The passkey could not be checked. Try again.") from None
        credential_id = bytes_to_base64url(verified.credential_id)
        if models.passkey_by_credential(credential_id) is not None:
            raise Invalid("This passkey is registered already.")
        passkey = models.add_passkey(
            Passkey(
                user_id=login.user_id,
                credential_id=credential_id,
                public_key=verified.credential_public_key,
                sign_count=verified.sign_count,
                backup_eligible=verified.credential_device_type == MULTI_DEVICE,
                backed_up=verified.credential_backed_up,
                name=name.strip()[:PASSKEY_NAME_MAX],
            )
        )
        _record(login, ip, "mfa.passkey_added", passkey_id=passkey.id)
        _complete(login, policy.passkey_methods(passkey.backup_eligible), "passkey", ip)

    await svc.db.run_sync(register)
    response = JSONResponse({"redirect": "/account?done=passkey_added"}, headers=NO_STORE)
    response.delete_cookie(_binding_cookie(svc), path="/")
    return response


async def _live_login(request: Request) -> LoginSession:
    svc = services(request)
    raw_sid = request.cookies.get(sessions.cookie_name(svc.settings))
    login = await svc.db.run_sync(sessions.find_active, svc.digester, svc.settings, raw_sid)
    if login is None:
        raise Forbidden("Sign in first.")
    if await svc.db.run_sync(_lacks_factor, login):
        raise Forbidden("Confirm it is you with your second factor first: sign in again.")
    return login
