"""Sign in (and link an account) with an upstream provider: `/login/federated/...`.

Start: the attempt's state, nonce and PKCE verifier go into a short-lived cookie encrypted
with a key derived from the root secret, so the callback is bound to the browser that
started it (docs/security.md N102). Callback: the cookie is read and cleared, the state
compared and spent once (the key-value store), RFC 9207 `iss` checked, the code redeemed,
and then the linking rules of `resolve` decide who signs in. Every failure ends on our sign-in
page with a sentence, never a 500, and with nothing created.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import audit, rest, web
from authserver.db import current_session, utcnow
from authserver.errors import AppError
from authserver.federation import models, providers
from authserver.federation.buttons import MAX_AGE, choices
from authserver.federation.models import IdentityProvider
from authserver.federation.providers import SecretBox
from authserver.federation.upstream import LEEWAY, Attempt, Person, UpstreamError
from authserver.organizations import models as orgs
from authserver.rendering import render
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.sessions.pages import (
    IP_WINDOW,
    current_login,
    safe_next,
    set_session_cookie,
)
from authserver.users import models as users
from authserver.web import CSRF_FIELD, client_ip, read_form

FLOW_COOKIE = "fedflow"
FLOW_TTL = 600
FLOW_PURPOSE = b"authserver/federation/flow"
UNAVAILABLE = "That sign-in option is not available."
EXPIRED = (
    "Your sign-in with the other provider expired or was started in another browser. Start again."
)
DENIED = "You cancelled the sign-in at {name}, or {name} refused it. Nothing was changed."
FAILED = "{name} could not sign you in. Try again, or sign in another way."
EXISTING = (
    "An account with the email address {name} gave us already exists here. Sign in with "
    "your password, then link {name} from your account page."
)
NO_ACCOUNT = "There is no account here for the {name} account you used."
NO_EMAIL = "{name} did not share an email address, so no account can be made for you."
DISABLED = "This account cannot sign in."
TAKEN = "That {name} account is already linked to another person here."
VERIFY_EMAIL = (
    "Your email address here is not verified yet. Open the link in the message we sent you, "
    "then sign in again."
)
NOT_FRESH = "{name} did not confirm a fresh sign-in."
TOO_LONG = "This sign-in request is too long to continue with another provider."
TOO_MANY = "Too many sign-in attempts. Wait a minute and try again."
#: Browsers keep cookies up to 4096 bytes, name and attributes included.
COOKIE_MAX = 3800
RELOGIN_TO_LINK = "Sign in again, then link the account from your account page."
LINK_NOTICE = "linked"
UNLINK_NOTICE = "unlinked"


@dataclass(frozen=True)
class Flow:
    """What the callback needs from the start: never readable or forgeable by the browser."""

    provider_id: str
    state: str
    nonce: str
    verifier: str
    next_url: str | None
    max_age: int | None
    link_user: str | None
    expires: float
    #: We asked upstream for a fresh sign-in (`prompt=login`) at `started`.
    fresh: bool = False
    started: float = 0.0

    def attempt(self) -> Attempt:
        return Attempt(self.state, self.nonce, self.verifier)


def _box(services: Services) -> SecretBox:
    return services.federation.flow_box


def _seal(services: Services, flow: Flow) -> str:
    return _box(services).seal(json.dumps(flow.__dict__).encode(), "flow")


def _unseal(services: Services, raw: str | None) -> Flow | None:
    if not raw or len(raw) > 20_000:
        return None
    opened = _box(services).open(raw, "flow")
    if opened is None:
        return None
    try:
        flow = Flow(**json.loads(opened))
    except (ValueError, TypeError):
        return None
    return flow if flow.expires > time.time() else None


def _flow_cookie(services: Services) -> str:
    return web.cookie_name(FLOW_COOKIE, services.settings.is_https)


# -- start ------------------------------------------------------------------------------


async def start(request: Request) -> Response:
    """GET from a "Continue with" button: off to the upstream provider."""
    next_url = safe_next(request.query_params.get("next"))
    max_age = request.query_params.get("max_age", "")
    hint = request.query_params.get("login_hint", "")
    return await _redirect_upstream(
        request,
        rest.path_id(request, "provider_id"),
        next_url=next_url,
        max_age=int(max_age) if MAX_AGE.fullmatch(max_age) else None,
        login_hint=hint if len(hint) <= users.EMAIL_MAX and hint.isprintable() else "",
        link_user=None,
    )


async def start_link(request: Request) -> Response:
    """POST from /account: link another upstream account to the signed-in person (a fresh
    upstream sign-in, CSRF-checked like every account action)."""
    form = await read_form(request)
    services(request).csrf.verify(request, form.get(CSRF_FIELD))
    login = await current_login(request)
    if login is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    return await _redirect_upstream(
        request,
        rest.path_id(request, "provider_id"),
        next_url="/account",
        max_age=None,
        login_hint="",
        link_user=login.user_id,
    )


async def _redirect_upstream(
    request: Request,
    provider_id: str,
    *,
    next_url: str | None,
    max_age: int | None,
    login_hint: str,
    link_user: str | None,
) -> Response:
    svc = services(request)
    provider = await svc.db.run_sync(providers.get, provider_id)
    if provider is None or not provider.enabled:
        return _refused(request, UNAVAILABLE, next_url, status=404)
    attempt = Attempt()
    fresh = link_user is not None or _asks_fresh_sign_in(next_url)
    location = svc.federation.upstream.authorization_url(
        provider, attempt, fresh=fresh, max_age=max_age, login_hint=login_hint
    )
    flow = Flow(
        provider_id=provider.id,
        state=attempt.state,
        nonce=attempt.nonce,
        verifier=attempt.verifier,
        next_url=next_url,
        max_age=max_age,
        link_user=link_user,
        expires=time.time() + FLOW_TTL,
        fresh=fresh,
        started=time.time(),
    )
    sealed = _seal(svc, flow)
    if len(sealed) > COOKIE_MAX:
        return _refused(request, TOO_LONG, None)
    response = RedirectResponse(location, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(
        _flow_cookie(svc),
        sealed,
        max_age=FLOW_TTL,
        httponly=True,
        secure=svc.settings.is_https,
        samesite="lax",
        path="/login/federated",
    )
    return response


def _asks_fresh_sign_in(next_url: str | None) -> bool:
    """A pending /authorize request that needs a new sign-in (`prompt=login`, `max_age`, an
    `id_token_hint` for someone else) carries the `auth_after` marker: ask upstream for a
    fresh sign-in too, or its old session would loop us back here."""
    if next_url is None or not next_url.startswith("/authorize?"):
        return False
    return "auth_after" in parse_qs(urlsplit(next_url).query)


# -- callback -----------------------------------------------------------------------------


async def callback(request: Request) -> Response:
    svc = services(request)
    params = request.query_params
    flow = _unseal(svc, request.cookies.get(_flow_cookie(svc)))
    state = params.get("state", "")
    if flow is None or not state or not hmac.compare_digest(state.encode(), flow.state.encode()):
        return _clear(request, _refused(request, EXPIRED, flow.next_url if flow else None))
    spent = f"federation-state:{svc.digester.digest('federation-state', state)}"
    if not await run_in_threadpool(svc.limiter.kv.set_if_absent, spent, FLOW_TTL):
        return _clear(request, _refused(request, EXPIRED, flow.next_url))
    ip = client_ip(request)
    settings = svc.settings
    limited = await run_in_threadpool(
        svc.limiter.check, "login-ip", ip, settings.login_rate_per_ip, IP_WINDOW
    )
    if limited is not None:
        return _clear(request, _refused(request, TOO_MANY, flow.next_url, status=429))
    provider = await svc.db.run_sync(providers.get, flow.provider_id)
    if provider is None or not provider.enabled:
        return _clear(request, _refused(request, UNAVAILABLE, flow.next_url))
    failed = FAILED.format(name=provider.name)
    issuer = params.get("iss")
    if provider.kind == "oidc" and (
        (issuer is not None and issuer != provider.issuer)
        or (issuer is None and provider.sends_iss)
    ):
        await _audit_failure(svc, request, provider, "iss_mismatch")
        return _clear(request, _refused(request, failed, flow.next_url))
    if "error" in params:
        denied = params.get("error") in {"access_denied", "consent_required", "login_required"}
        message = DENIED.format(name=provider.name) if denied else failed
        await _audit_failure(svc, request, provider, "upstream_error")
        return _clear(
            request, _refused(request, message, flow.next_url, status=403 if denied else 400)
        )
    code = params.get("code", "")
    if not code or len(code) > 2000:
        return _clear(request, _refused(request, failed, flow.next_url))
    try:
        person = await run_in_threadpool(
            svc.federation.upstream.sign_in, provider, code, flow.attempt(), flow.max_age
        )
    except UpstreamError as error:
        await _audit_failure(svc, request, provider, "upstream_refused")
        return _clear(request, _refused(request, error.message, flow.next_url))
    except AppError:
        return _clear(request, _refused(request, failed, flow.next_url))
    if flow.fresh:
        upstream_time = person.auth_time.timestamp() if person.auth_time else time.time()
        if upstream_time < flow.started - LEEWAY:
            await _audit_failure(svc, request, provider, "not_fresh")
            return _clear(
                request, _refused(request, NOT_FRESH.format(name=provider.name), flow.next_url)
            )
        person = replace(
            person, auth_time=datetime.fromtimestamp(max(upstream_time, flow.started), UTC)
        )
    if provider.kind == "oidc":
        used = f"federation-nonce:{svc.digester.digest('federation-nonce', flow.nonce)}"
        if not await run_in_threadpool(svc.limiter.kv.set_if_absent, used, FLOW_TTL * 2):
            return _clear(request, _refused(request, failed, flow.next_url))
    outcome = await svc.db.run_sync(
        resolve,
        svc,
        provider.id,
        person,
        link_user=flow.link_user,
        previous_sid=request.cookies.get(sessions.cookie_name(svc.settings)),
        ip=ip,
        user_agent=request.headers.get("user-agent", ""),
    )
    if isinstance(outcome, Refusal):
        return _clear(request, _refused(request, outcome.message, flow.next_url, status=403))
    if flow.link_user is not None:
        return _clear(request, RedirectResponse(f"/account?done={LINK_NOTICE}", status_code=303))
    response = RedirectResponse(flow.next_url or "/login", status_code=303)
    set_session_cookie(response, svc.settings, outcome.raw_sid)
    return _clear(request, response)


@dataclass(frozen=True)
class Refusal:
    message: str


@dataclass(frozen=True)
class SignedIn:
    raw_sid: str


def resolve(
    services: Services,
    provider_id: str,
    person: Person,
    *,
    link_user: str | None,
    previous_sid: str | None,
    ip: str,
    user_agent: str,
) -> Refusal | SignedIn:
    """The linking rules, in one unit of work (docs/security.md N104):

    - a linked (provider, subject) signs that person in, whatever their email is now;
    - otherwise an account with the same (normalised) email is linked only when the upstream
      says the address is verified AND the provider is authoritative for its domain (or the
      operator trusts its verified emails); never on an unverified or foreign claim;
    - otherwise a new account, when the provider allows just-in-time accounts and none has
      that email; else the person must sign in here first and link from /account.

    A sign-in opens a session under a new id and ends the browser's previous one, as a
    password sign-in does (docs/security.md H63).
    """
    provider = providers.get(provider_id)
    if provider is None or not provider.enabled:
        return Refusal(UNAVAILABLE)
    name = provider.name
    found = models.find_link(provider.id, person.subject)
    if link_user is not None:
        return _link_to(services, provider, person, found, link_user, previous_sid, ip)
    how = "linked"
    if found is not None:
        user = users.get(found.user_id)
        models.touch(found, person.email)
    else:
        user = users.find_by_email(person.email) if person.email else None
        if user is not None:
            if not (person.email_verified and _authoritative(provider, person.email)):
                _failure(provider, person, ip, "link_requires_sign_in", user.id)
                return Refusal(EXISTING.format(name=name))
            how = "email"
            _new_link(provider, person, user.id, ip, "user", user.id, reason="verified_email")
        elif provider.jit and person.email:
            try:
                user = users.create(email=person.email, password_hash=None, name=person.name)
            except AppError:
                _failure(provider, person, ip, "account_not_created", None)
                return Refusal(FAILED.format(name=name))
            user.email_verified = person.email_verified
            how = "created"
            audit.record(
                "user.created", actor_type="system", ip=ip, target_type="user",
                target_id=user.id, via="federation", provider_id=provider.id,
            )  # fmt: skip
            _new_link(provider, person, user.id, ip, "system", None, reason="jit")
        else:
            _failure(provider, person, ip, "no_account", None)
            return Refusal((NO_ACCOUNT if person.email else NO_EMAIL).format(name=name))
    if user is None or not user.is_active:
        _failure(provider, person, ip, "account_disabled", user.id if user else None)
        return Refusal(DISABLED)
    if services.settings.require_verified_email and not user.email_verified:
        _failure(provider, person, ip, "email_unverified", user.id)
        return Refusal(VERIFY_EMAIL)
    _join_organization(provider, user.id)
    previous = sessions.find_active(services.digester, services.settings, previous_sid, touch=False)
    if previous is not None:
        sessions.end(services.app_access, previous.id)
    login, raw_sid = sessions.start(
        services.digester,
        services.settings,
        user_id=user.id,
        user_agent=user_agent,
        ip=ip,
        amr=" ".join(("fed", *person.amr)),
        auth_time=_auth_time(person.auth_time),
        factor_times={},
    )
    audit.record(
        "login.succeeded", actor_type="user", actor_id=user.id, ip=ip, target_type="session",
        target_id=login.id, method="federated", provider_id=provider.id, account=how,
    )  # fmt: skip
    return SignedIn(raw_sid)


def _auth_time(upstream: datetime | None) -> datetime | None:
    """The upstream's sign-in time, never in our future."""
    if upstream is None:
        return None
    return min(upstream, utcnow())


def _authoritative(provider: IdentityProvider, email: str) -> bool:
    domain = email.rpartition("@")[2]
    return provider.trust_verified_emails or domain in (provider.domains or [])


def _link_to(
    services: Services,
    provider: IdentityProvider,
    person: Person,
    found: models.LinkedIdentity | None,
    user_id: str,
    previous_sid: str | None,
    ip: str,
) -> Refusal | SignedIn:
    """Linking from /account: the same browser session must still be signed in as the
    person who asked (a fresh upstream sign-in on their own behalf)."""
    login = sessions.find_active(services.digester, services.settings, previous_sid, touch=False)
    if login is None or login.user_id != user_id:
        return Refusal(RELOGIN_TO_LINK)
    if found is not None:
        if found.user_id == user_id:
            return SignedIn("")
        _failure(provider, person, ip, "subject_linked_elsewhere", user_id)
        return Refusal(TAKEN.format(name=provider.name))
    try:
        _new_link(provider, person, user_id, ip, "user", user_id, reason="account_page")
    except AppError:
        return Refusal(TAKEN.format(name=provider.name))
    return SignedIn("")


def _new_link(
    provider: IdentityProvider,
    person: Person,
    user_id: str,
    ip: str,
    actor_type: str,
    actor_id: str | None,
    *,
    reason: str,
) -> None:
    identity = models.link(user_id, provider.id, person.subject, person.email)
    audit.record(
        "identity.linked", actor_type=actor_type, actor_id=actor_id, ip=ip,
        target_type="user", target_id=user_id, provider_id=provider.id,
        identity_id=identity.id, reason=reason,
    )  # fmt: skip


def _failure(
    provider: IdentityProvider, person: Person, ip: str, reason: str, user_id: str | None
) -> None:
    audit.record(
        "login.failed", outcome="failure", actor_type="user", actor_id=user_id, ip=ip,
        target_type="user" if user_id else None, target_id=user_id, method="federated",
        provider_id=provider.id, reason=reason,
    )  # fmt: skip


async def _audit_failure(
    services: Services, request: Request, provider: IdentityProvider, reason: str
) -> None:
    def record() -> None:
        audit.record(
            "login.failed", outcome="failure", ip=client_ip(request), method="federated",
            provider_id=provider.id, reason=reason,
        )  # fmt: skip

    await services.db.run_sync(record)


def _join_organization(provider: IdentityProvider, user_id: str) -> None:
    """The provider's organization, with its default role; an existing membership (and the
    role an owner gave) stays as it is."""
    if provider.organization_id is None:
        return
    if orgs.membership_of(provider.organization_id, user_id) is not None:
        return
    current_session().add(
        orgs.Membership(
            organization_id=provider.organization_id, user_id=user_id, role=provider.default_role
        )
    )
    current_session().flush()


def _refused(
    request: Request, message: str, next_url: str | None, *, status: int = 400
) -> Response:
    context = {
        "email": "",
        "next": next_url,
        "error": message,
        "providers": choices(request, next_url, ""),
    }
    return render(request, "login.html", context, status=status)


def _clear(request: Request, response: Response) -> Response:
    """Every callback spends the attempt: its cookie goes, whatever the outcome."""
    svc = services(request)
    response.delete_cookie(
        _flow_cookie(svc),
        httponly=True,
        secure=svc.settings.is_https,
        samesite="lax",
        path="/login/federated",
    )
    return response


# -- /account: unlink ------------------------------------------------------------------------


async def unlink(request: Request) -> Response:
    form = await read_form(request)
    svc = services(request)
    svc.csrf.verify(request, form.get(CSRF_FIELD))
    login = await current_login(request)
    if login is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    identity_id = rest.path_id(request, "identity_id")
    ip = client_ip(request)

    def remove() -> None:
        identity = models.unlink(login.user_id, identity_id)
        audit.record(
            "identity.unlinked", actor_type="user", actor_id=login.user_id, ip=ip,
            target_type="user", target_id=login.user_id, provider_id=identity.provider_id,
            identity_id=identity.id,
        )  # fmt: skip

    try:
        await svc.db.run_sync(remove)
    except AppError as error:
        return render(
            request,
            "message.html",
            {"title": "This account stays linked", "text": error.detail, "alert": True,
             "action": ("/account", "Back to your account")},
            status=error.status_code,
        )  # fmt: skip
    return RedirectResponse(f"/account?done={UNLINK_NOTICE}", status_code=303)


def account_view(user_id: str) -> dict[str, Any]:
    """The /account panel: the person's links, and the providers they could link."""
    links = models.links_of(user_id)
    linked = {provider.id for _, provider in links}
    return {
        "identities": [
            {"id": identity.id, "provider": provider.name, "email": identity.email}
            for identity, provider in links
        ],
        "linkable": [
            {"id": provider.id, "name": provider.name}
            for provider in providers.enabled()
            if provider.id not in linked
        ],
    }
