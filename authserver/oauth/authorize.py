"""The authorization endpoint and its consent step (RFC 6749 §4.1, OIDC Core §3.1.2).

GET or POST /authorize: validate (Authlib) → sign-in needed? → consent needed? → code.
The authorization request travels in the URL: the login page gets it back as `next`, the
consent page as its own query string, and every step validates it again with Authlib, so a
page never trusts a hidden field (docs/security.md H65). Nothing is stored until the code.

The `organization` scope makes the user pick one of their organizations on the consent
page, also when consent itself is remembered or skipped (unless they have exactly one):
the choice belongs to this authorization, not to the client, and the posted id is taken
only after checking the membership.

Errors before the client and its redirect URI are trusted are an error page; after that
they go back to the client with `error`, `state` and `iss` (RFC 6749 §4.1.2.1, RFC 9207),
always with 303, never 307 (RFC 9700 §4.12).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import AccessDeniedError, UnsupportedResponseTypeError
from authlib.oidc.core.errors import (
    ConsentRequiredError,
    InteractionRequiredError,
    LoginRequiredError,
)
from itsdangerous import BadData, URLSafeSerializer, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import audit, db
from authserver.errors import NO_STORE, Invalid, html_error_response
from authserver.mfa import models as mfa_models
from authserver.mfa import policy as mfa
from authserver.oauth import consent, oidc, par
from authserver.oauth.grants import (
    RESPONSE_MODES,
    AuthorizationCodeGrant,
    check_admin_scope,
    in_organization,
)
from authserver.oauth.requests import (
    MalformedRequest,
    Params,
    RequestSnapshot,
    read_authorization_request,
)
from authserver.oauth.token_format import ORGANIZATION, EndUser
from authserver.organizations import models as orgs
from authserver.security import new_token
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.users import models as users
from authserver.web import CSRF_FIELD

#: Parameters dropped from the `next` URL when sending the user to sign in, so that the
#: request coming back after a fresh sign-in does not ask for one again. What they asked for
#: travels on as `auth_after` (below), so it is still enforced here, not only by the login page.
REAUTHENTICATION = ("max_age", "auth_after")
REAUTHENTICATION_PROMPTS = {"login", "select_account"}
#: Added to `next` when a signed-in user must sign in again (`prompt=login`, `max_age`, an
#: `id_token_hint` for someone else): the moment of asking, signed with a key derived from
#: the root secret and bound to the client. The request coming back is answered only for a
#: session that signed in at or after that moment; a marker that fails to verify asks for a
#: fresh sign-in again (docs/security.md A15).
AUTH_AFTER = "auth_after"
#: The consent form's single-use nonce: a second submit of one rendered form is refused, so
#: a double click or a replayed POST gets no second code (docs/security.md H65, K84).
CONSENT_NONCE_FIELD = "consent_nonce"
CONSENT_NONCE_TTL = 24 * 3600
ALREADY_ANSWERED = "This request was already answered. Go back to the application to continue."
CONSENT_FORM_EXPIRED = "This consent form has expired. Go back to the application and try again."
CONSENT_FORM_MISMATCH = (
    "This answer does not belong to the request it was sent for. Nothing was allowed. "
    "Go back to the application and try again."
)
UNSUPPORTED_RESPONSE_TYPE = "Only response_type=code (the authorization code flow) is supported."
NO_RESPONSE_TYPE = "The response_type parameter is missing: send response_type=code."
#: The chooser lists at most this many of the user's organizations (the oldest ones).
CHOOSER_LIMIT = 200
NOT_YOUR_ORGANIZATION = "Choose one of your organizations to continue."
SET_UP_FACTOR = (
    "Your account must use a second factor. Set up an authenticator app or a passkey on "
    "your account page (/account), then go back to the application and try again."
)


@dataclass(frozen=True)
class ErrorPage:
    detail: str


@dataclass(frozen=True)
class ToClient:
    """An authorization response (success or error) for the client's redirect URI."""

    redirect_uri: str
    params: list[tuple[str, str]]
    response_mode: str


@dataclass(frozen=True)
class SeeOther:
    location: str


@dataclass(frozen=True)
class OrganizationChoice:
    id: str
    name: str
    role: str


@dataclass(frozen=True)
class AskConsent:
    """The consent page; with `choose_only` the consent is granted already and the page
    only asks which organization (None: the `organization` scope was not requested)."""

    client_name: str
    scopes: list[str]
    query: str
    email: str
    unverified_host: str | None = field(default=None)
    #: A client known by its metadata document: the host that serves it.
    document_host: str | None = None
    #: The client's registered logo and policy links (https only), by metadata name.
    links: dict[str, str] = field(default_factory=dict)
    organizations: list[OrganizationChoice] | None = None
    choose_only: bool = False
    #: What the form's nonce is bound to (`_binding`).
    binding: str = ""


Outcome = ErrorPage | ToClient | SeeOther | AskConsent


async def authorize(request: Request) -> Response:
    """GET or POST /authorize (OIDC Core §3.1.2.1: both must be supported)."""
    return await _handle(request, step="authorize", with_body=True)


async def consent_page(request: Request) -> Response:
    """GET /consent?<authorization request> shows the page; POST answers it.

    The form posts back to the same query string; CSRF is checked first, and each answer
    validates the request again. Each rendered form carries a single-use nonce that an
    answer (Allow or Deny) consumes atomically in the kv backend, so of two submits of the
    same form (a double click, parallel requests, a replay) only the first gets an answer and
    the others a 400 page: a double submit gives one code (docs/security.md H65, K84).
    """
    if request.method == "GET":
        return await _handle(request, step="show", with_body=False)
    svc = services(request)
    form = await request.form()
    token = form.get(CSRF_FIELD)
    svc.csrf.verify(request, token if isinstance(token, str) else None)
    decision = form.get("decision")
    if decision not in ("allow", "deny"):
        raise Invalid("Choose Allow or Deny.")
    chosen = form.get("organization")
    organization = chosen if isinstance(chosen, str) else None
    sent_nonce = form.get(CONSENT_NONCE_FIELD)
    nonce = sent_nonce if isinstance(sent_nonce, str) else None
    return await _handle(
        request, step=str(decision), with_body=False, organization=organization, nonce=nonce
    )


async def _handle(
    request: Request,
    *,
    step: str,
    with_body: bool,
    organization: str | None = None,
    nonce: str | None = None,
) -> Response:
    svc = services(request)
    settings = svc.settings
    try:
        snapshot = await read_authorization_request(request, settings.issuer, with_body=with_body)
    except MalformedRequest as error:
        return html_error_response(request, 400, error.description)
    raw_sid = request.cookies.get(sessions.cookie_name(settings))
    await svc.clients.prefetch(snapshot.first("client_id"))
    outcome = await svc.db.run_sync(decide, svc, snapshot, raw_sid, step, organization, nonce)
    return _respond(request, svc, outcome)


def decide(
    services: Services,
    snapshot: RequestSnapshot,
    raw_sid: str | None,
    step: str,
    organization: str | None = None,
    nonce: str | None = None,
) -> Outcome:
    """What to answer to an authorization request; `step` is where it came from:
    `authorize`, the consent page (`show`), or the user's answer there (`allow`/`deny`,
    with the `organization` id picked, as posted and not yet checked, and the form's
    single-use `nonce`).

    A pushed request (RFC 9126) is expanded first, and consumed by the answer that goes
    back to the client; should another answer have consumed it in between, this one rolls
    back with its code."""
    try:
        pushed = par.expand(services, snapshot, db.utcnow())
    except par.Refused as refusal:
        return ErrorPage(refusal.description)
    if pushed is None:
        return _decide(services, snapshot, raw_sid, step, organization, nonce)
    outcome = _decide(services, _with_pushed(snapshot, pushed), raw_sid, step, organization, nonce)
    if isinstance(outcome, ToClient) and not par.consume(pushed.id, db.utcnow()):
        raise Invalid(par.ALREADY_USED)
    return outcome


def _decide(
    services: Services,
    snapshot: RequestSnapshot,
    raw_sid: str | None,
    step: str,
    organization: str | None,
    nonce: str | None,
) -> Outcome:
    now = db.utcnow()
    login = sessions.find_active(services.digester, services.settings, raw_sid, now=now)
    end_user = _end_user(login)
    try:
        grant = services.oauth.get_consent_grant(snapshot, end_user=end_user)
    except OAuth2Error as error:
        return _refusal(snapshot, error)
    try:
        return _interact(services, snapshot, grant, login, end_user, step, now, organization, nonce)
    except OAuth2Error as error:
        error.redirect_uri = grant.redirect_uri
        error.state = grant.request.payload.state
        return _refusal(snapshot, error)


def _interact(
    services: Services,
    snapshot: RequestSnapshot,
    grant: AuthorizationCodeGrant,
    login: LoginSession | None,
    end_user: EndUser | None,
    step: str,
    now: datetime,
    organization: str | None,
    nonce: str | None = None,
) -> Outcome:
    request = grant.request
    client, data = request.client, request.payload.data
    prompts = set(data.get("prompt", "").split())
    if login is None or end_user is None or _needs_sign_in(services, request, login, now):
        if "none" in prompts:
            raise LoginRequiredError()
        marker = _auth_after(services, client.id, now) if login is not None else None
        return SeeOther(_login_url(snapshot, marker))
    step_up = _second_factor(services, snapshot, login)
    if step_up is not None:
        if "none" in prompts:
            raise InteractionRequiredError()
        return step_up
    check_admin_scope(request.scope, end_user)
    offered = _choices(end_user) if ORGANIZATION in request.scope.split() else None
    binding = _binding(services, grant, end_user, offered)
    if step == "deny":
        refused = _consume_nonce(services, nonce, binding)
        if refused is not None:
            return refused
        _record_consent("consent.denied", snapshot, client.id, end_user)
        raise AccessDeniedError()
    if step == "allow":
        acting = in_organization(end_user, organization, request.scope)
        if acting is None or (offered is not None and organization not in {c.id for c in offered}):
            return ErrorPage(NOT_YOUR_ORGANIZATION)
        refused = _consume_nonce(services, nonce, binding)
        if refused is not None:
            return refused
        consent.remember(end_user.user.id, client.id, request.scope, now)
        _record_consent("consent.granted", snapshot, client.id, end_user, scope=request.scope)
        end_user = acting
    else:
        choices = offered
        asking = _needs_consent(request, end_user, prompts)
        if asking or (choices is not None and len(choices) != 1):
            if "none" in prompts:
                raise ConsentRequiredError() if asking else InteractionRequiredError()
            if step == "show":
                ask = _ask(snapshot, request, end_user, choices, choose_only=not asking)
                return replace(ask, binding=binding)
            return SeeOther("/consent?" + urlencode(snapshot.url_params))
        if step == "show":
            return SeeOther("/authorize?" + urlencode(snapshot.url_params))
        if choices:
            end_user = replace(end_user, organization_id=choices[0].id, org_role=choices[0].role)
    code = grant.issue_code(end_user)
    params = [("code", code)]
    if request.payload.state:
        params.append(("state", request.payload.state))
    return ToClient(grant.redirect_uri, params, _response_mode(snapshot, grant.redirect_uri))


def _end_user(login: LoginSession | None) -> EndUser | None:
    user = users.get(login.user_id) if login is not None else None
    if login is None or user is None:
        return None
    return EndUser(user, login.id, login.auth_time, login.amr, login.acr or mfa.acr_for(login.amr))


def _second_factor(
    services: Services, snapshot: RequestSnapshot, login: LoginSession
) -> Outcome | None:
    """The second step for a session signed in with a password only, when the client asks
    for multi-factor (`acr_values`) or a policy requires it. A client
    merely preferring it for someone without a factor gets tokens whose `acr` says `pwd`
    (`acr_values` is voluntary, OIDC Core §3.1.2.1); a policy is not."""
    if "mfa" in login.amr.split():
        return None
    wanted = mfa.asks_for_mfa(snapshot.first("acr_values"))
    required = mfa.required(services.settings, login.user_id)
    if not (wanted or required):
        return None
    if mfa_models.has_factor(login.user_id):
        return SeeOther(mfa.factor_url("/authorize?" + urlencode(snapshot.params)))
    return ErrorPage(SET_UP_FACTOR) if required else None


def _needs_sign_in(services: Services, request: Any, login: LoginSession, now: datetime) -> bool:
    """OIDC Core §3.1.2.1: `prompt=login` (and `select_account`, as we have no account
    chooser), `max_age` older than the sign-in, or an `id_token_hint` naming someone else;
    and on the way back from such a sign-in, a session older than the `auth_after` marker
    (or a marker that does not verify)."""
    data = request.payload.data
    if set(data.get("prompt", "").split()) & REAUTHENTICATION_PROMPTS:
        return True
    max_age = data.get("max_age")
    if max_age is not None and (now - login.auth_time).total_seconds() > int(max_age):
        return True
    marker = data.get(AUTH_AFTER)
    if marker is not None:
        after = _read_auth_after(services, marker, request.client.id)
        if after is None or login.auth_time < after:
            return True
    hint = data.get("id_token_hint")
    if hint is None:
        return False
    client_id = request.client.id
    return (
        oidc.id_token_hint_subject(services.keystore, services.settings, hint, client_id)
        != login.user_id
    )


def _needs_consent(request: Any, end_user: EndUser, prompts: set[str]) -> bool:
    """Consent is asked unless remembered for every requested scope. `prompt=consent`
    forces it; clients marked `skip_consent` (first party) never ask. A client whose
    identity nobody vouched for (`Client.unverified`: dynamically registered, or known by its
    metadata document) always asks, whatever its registration says, so a silent
    `prompt=none` request from it is `consent_required` (ASVS 10.4.7, RFC 9700 §4.11.2)."""
    client = request.client
    if client.unverified:
        return True
    if client.skip_consent:
        return False
    return "consent" in prompts or not consent.covers(end_user.user.id, client.id, request.scope)


def _auth_marker_serializer(services: Services) -> URLSafeSerializer:
    return URLSafeSerializer(services.digester.key(AUTH_AFTER), salt="authserver.auth_after")


def _auth_after(services: Services, client_id: str, now: datetime) -> str:
    """The signed `auth_after` marker: sign-ins before `now` no longer do for `client_id`."""
    return str(_auth_marker_serializer(services).dumps({"t": now.isoformat(), "c": client_id}))


def _read_auth_after(services: Services, marker: str, client_id: str) -> datetime | None:
    """The moment a marker names, or None when it is tampered with, foreign or malformed."""
    try:
        payload = _auth_marker_serializer(services).loads(marker)
        if not isinstance(payload, dict) or payload.get("c") != client_id:
            return None
        after = datetime.fromisoformat(str(payload["t"]))
    except (BadData, KeyError, ValueError, TypeError):
        return None
    return after if after.tzinfo is not None else None


def _login_url(snapshot: RequestSnapshot, marker: str | None = None) -> str:
    """`/login?next=/authorize?...`, minus what asked for re-authentication, so the loop ends
    once the user has signed in again (the login page accepts only such a `next`); with
    `marker`, `next` carries it so that only a sign-in made after now is accepted."""
    params = _without_reauthentication(snapshot.url_params)
    if marker is not None:
        params.append((AUTH_AFTER, marker))
    query = [("next", "/authorize?" + urlencode(params))]
    hint = snapshot.first("login_hint")
    if hint:
        query.append(("login_hint", hint))
    max_age = snapshot.first("max_age")
    if max_age:
        query.append(("max_age", max_age))
    return "/login?" + urlencode(query)


def _without_reauthentication(params: Params) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    for name, value in params:
        if name in REAUTHENTICATION:
            continue
        if name == "prompt":
            value = " ".join(p for p in value.split() if p not in REAUTHENTICATION_PROMPTS)
            if not value:
                continue
        kept.append((name, value))
    return kept


def _with_pushed(snapshot: RequestSnapshot, pushed: par.Pushed) -> RequestSnapshot:
    """The request as pushed (RFC 9126 §4: nothing else from the query counts), its URLs
    still carrying only what the browser sent. On the way back from a sign-in the pushed
    request asked for, the `auth_after` marker stands in for `prompt=login` / `max_age`,
    as `_login_url` arranges for an ordinary request."""
    params: Params = pushed.params
    marker = snapshot.first(AUTH_AFTER)
    if marker is not None:
        params = (*_without_reauthentication(params), (AUTH_AFTER, marker))
    return replace(snapshot, query=params, form=(), carried=snapshot.params)


def _choices(end_user: EndUser) -> list[OrganizationChoice]:
    """The user's organizations and roles, by name, for the chooser."""
    found = orgs.list_for_user(end_user.user.id, after=None, limit=CHOOSER_LIMIT)
    choices = [OrganizationChoice(org.id, org.name, role) for org, role in found]
    return sorted(choices, key=lambda choice: (choice.name.casefold(), choice.id))


def _ask(
    snapshot: RequestSnapshot,
    request: Any,
    end_user: EndUser,
    choices: list[OrganizationChoice] | None,
    *,
    choose_only: bool,
) -> AskConsent:
    client = request.client
    redirect_uri = request.payload.redirect_uri or client.get_default_redirect_uri()
    return AskConsent(
        client_name=client.name,
        scopes=consent.describe(request.scope, client.name),
        query=urlencode(snapshot.url_params),
        email=end_user.user.email,
        unverified_host=_destination(redirect_uri) if client.dynamically_registered else None,
        document_host=document_host(client),
        links=consent.consent_links(client),
        organizations=choices,
        choose_only=choose_only,
    )


def _destination(redirect_uri: str) -> str:
    """Where Allow or Deny sends the person: the redirect URI's host (and port), or the
    whole URI of a native app's private-use scheme, which has no host."""
    return urlsplit(redirect_uri).netloc or redirect_uri


def _record_consent(
    event: str, snapshot: RequestSnapshot, client_id: str, end_user: EndUser, **details: str
) -> None:
    audit.record(
        event,
        actor_type="user",
        actor_id=end_user.user.id,
        ip=snapshot.client_ip,
        target_type="client",
        target_id=client_id,
        **details,
    )


def _nonce_serializer(services: Services) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        services.digester.key(CONSENT_NONCE_FIELD), salt="authserver.consent_nonce"
    )


def _binding(
    services: Services,
    grant: AuthorizationCodeGrant,
    end_user: EndUser,
    offered: list[OrganizationChoice] | None,
) -> str:
    """A digest of what a consent form was shown for: the client, redirect URI and scope,
    the organizations offered, the person and their browser session. The form's nonce
    carries it, so an answer counts only for the very request it was shown for: a nonce
    from one client's form posted to another client's `/consent` URL (or for a wider
    scope, another person, another session) is refused (docs/security.md H65)."""
    parts = [
        grant.request.client.id,
        grant.redirect_uri,
        " ".join(sorted(set(grant.request.scope.split()))),
        end_user.user.id,
        end_user.session_id or "",
        " ".join(sorted(c.id for c in offered)) if offered is not None else "-",
    ]
    return services.digester.digest(CONSENT_NONCE_FIELD + ".binding", "\n".join(parts))


def consume_consent_nonce(services: Services, nonce: str | None, binding: str) -> ErrorPage | None:
    """`_consume_nonce` for the device flow's consent form."""
    return _consume_nonce(services, nonce, binding)


def document_host(client: Any) -> str | None:
    """For a client known by its metadata document: the host that serves it."""
    return urlsplit(client.id).netloc if client.metadata_document else None


def _consume_nonce(services: Services, nonce: str | None, binding: str) -> ErrorPage | None:
    """None when `nonce` is the nonce of a consent form shown for this very request
    (`binding`), answered now for the first time; else the page to show. Consumed with one
    atomic set-if-absent, so of parallel submits one wins."""
    if not nonce or len(nonce) > 300:
        return ErrorPage(CONSENT_FORM_EXPIRED)
    try:
        payload = _nonce_serializer(services).loads(nonce, max_age=CONSENT_NONCE_TTL)
    except BadData:
        return ErrorPage(CONSENT_FORM_EXPIRED)
    bound = payload.get("b") if isinstance(payload, dict) else None
    if not isinstance(bound, str) or not hmac.compare_digest(bound, binding):
        return ErrorPage(CONSENT_FORM_MISMATCH)
    key = "consent-nonce:" + services.digester.digest(CONSENT_NONCE_FIELD, nonce)
    if not services.limiter.kv.set_if_absent(key, CONSENT_NONCE_TTL):
        return ErrorPage(ALREADY_ANSWERED)
    return None


def _refusal(snapshot: RequestSnapshot, error: OAuth2Error) -> Outcome:
    """An error page unless Authlib trusted a redirect URI with the error."""
    description = error.get_error_description() or ""
    if isinstance(error, UnsupportedResponseTypeError):
        # Authlib passes its sentence as the response type and wraps it in another one.
        description = (
            UNSUPPORTED_RESPONSE_TYPE if snapshot.first("response_type") else NO_RESPONSE_TYPE
        )
    if not error.redirect_uri:
        return ErrorPage(description or "The authorization request is invalid.")
    params = [("error", str(error.error))]
    if description:
        params.append(("error_description", description))
    if error.state:
        params.append(("state", error.state))
    return ToClient(error.redirect_uri, params, _response_mode(snapshot, error.redirect_uri))


def _response_mode(snapshot: RequestSnapshot, redirect_uri: str) -> str:
    """OAuth 2.0 Form Post Response Mode, for successes and errors alike; anything else
    (or form_post to a non-web redirect URI) answers in the query."""
    mode = snapshot.first("response_mode")
    if mode in RESPONSE_MODES and (mode == "query" or redirect_uri.startswith(("https:", "http:"))):
        return str(mode)
    return "query"


def _respond(request: Request, services: Services, outcome: Outcome) -> Response:
    if isinstance(outcome, ErrorPage):
        return html_error_response(request, 400, outcome.detail)
    if isinstance(outcome, SeeOther):
        return RedirectResponse(outcome.location, status_code=303, headers=NO_STORE)
    if isinstance(outcome, AskConsent):
        return _consent_form(request, services, outcome)
    params = [*outcome.params, ("iss", services.settings.issuer)]
    if outcome.response_mode == "form_post":
        context = {"title": "Continue", "action": outcome.redirect_uri, "params": params}
        return request.app.state.templates.TemplateResponse(
            request, "form_post.html", context, headers=NO_STORE
        )
    separator = "&" if "?" in outcome.redirect_uri else "?"
    location = outcome.redirect_uri + separator + urlencode(params)
    return RedirectResponse(location, status_code=303, headers=NO_STORE)


def _consent_form(request: Request, services: Services, ask: AskConsent) -> Response:
    return render_consent(request, services, ask, action=f"/consent?{ask.query}")


def render_consent(
    request: Request, services: Services, ask: AskConsent, *, action: str
) -> Response:
    """The consent page posting to `action`, with a single-use nonce bound to
    `ask.binding`; the device flow's /device page shows it too."""
    form_token, cookie_value = services.csrf.token(request)
    title = "Choose an organization" if ask.choose_only else f"Allow {ask.client_name}?"
    context = {
        "title": title,
        "ask": ask,
        "link_labels": consent.CONSENT_LINKS,
        "action": action,
        "csrf_field": CSRF_FIELD,
        "csrf_token": form_token,
        "nonce_field": CONSENT_NONCE_FIELD,
        "nonce": _nonce_serializer(services).dumps({"n": new_token(), "b": ask.binding}),
    }
    response = request.app.state.templates.TemplateResponse(
        request, "consent.html", context, headers=NO_STORE
    )
    services.csrf.set_cookie(response, cookie_value)
    return response
