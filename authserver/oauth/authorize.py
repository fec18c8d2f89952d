"""The authorization endpoint and its consent step (RFC 6749 §4.1, OIDC Core §3.1.2).

GET or POST /authorize: validate (Authlib) → sign-in needed? → consent needed? → code.
The authorization request travels in the URL: the login page gets it back as `next`, the
consent page as its own query string, and every step validates it again with Authlib, so a
page never trusts a hidden field (SECURITY.md H65). Nothing is stored until the code.

The `organization` scope makes the user pick one of their organizations on the consent
page, also when consent itself is remembered or skipped (unless they have exactly one):
the choice belongs to this authorization, not to the client, and the posted id is taken
only after checking the membership.

Errors before the client and its redirect URI are trusted are an error page; after that
they go back to the client with `error`, `state` and `iss` (RFC 6749 §4.1.2.1, RFC 9207),
always with 303, never 307 (RFC 9700 §4.12).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import AccessDeniedError
from authlib.oidc.core.errors import (
    ConsentRequiredError,
    InteractionRequiredError,
    LoginRequiredError,
)
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import audit, db
from authserver.errors import NO_STORE, Invalid, html_error_response
from authserver.oauth import consent, oidc
from authserver.oauth.grants import (
    RESPONSE_MODES,
    AuthorizationCodeGrant,
    check_admin_scope,
    in_organization,
)
from authserver.oauth.requests import MalformedRequest, RequestSnapshot, read_authorization_request
from authserver.oauth.tokens import ORGANIZATION, EndUser
from authserver.organizations import models as orgs
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.users import models as users
from authserver.web import CSRF_FIELD

if TYPE_CHECKING:
    from authserver.app import Services

#: Parameters dropped from the `next` URL when sending the user to sign in, so that the
#: request coming back after a fresh sign-in does not ask for one again.
REAUTHENTICATION = ("max_age",)
REAUTHENTICATION_PROMPTS = {"login", "select_account"}
#: The chooser lists at most this many of the user's organizations (the oldest ones).
CHOOSER_LIMIT = 200
NOT_YOUR_ORGANIZATION = "Choose one of your organizations to continue."


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
    organizations: list[OrganizationChoice] | None = None
    choose_only: bool = False


Outcome = ErrorPage | ToClient | SeeOther | AskConsent


async def authorize(request: Request) -> Response:
    """GET or POST /authorize (OIDC Core §3.1.2.1: both must be supported)."""
    return await _handle(request, step="authorize", with_body=True)


async def consent_page(request: Request) -> Response:
    """GET /consent?<authorization request> shows the page; POST answers it.

    The form posts back to the same query string; CSRF is checked first. Two submits of
    Allow both validate the request again and each get a code: both are the same user's
    legitimate answer to the same request, and only the one the client redeems first is
    worth anything (codes are single use and PKCE-bound).
    """
    if request.method == "GET":
        return await _handle(request, step="show", with_body=False)
    services: Services = request.app.state.services
    form = await request.form()
    token = form.get(CSRF_FIELD)
    services.csrf.verify(request, token if isinstance(token, str) else None)
    decision = form.get("decision")
    if decision not in ("allow", "deny"):
        raise Invalid("Choose Allow or Deny.")
    chosen = form.get("organization")
    organization = chosen if isinstance(chosen, str) else None
    return await _handle(request, step=str(decision), with_body=False, organization=organization)


async def _handle(
    request: Request, *, step: str, with_body: bool, organization: str | None = None
) -> Response:
    services: Services = request.app.state.services
    settings = services.settings
    try:
        snapshot = await read_authorization_request(request, settings.issuer, with_body=with_body)
    except MalformedRequest as error:
        return html_error_response(request, 400, error.description)
    raw_sid = request.cookies.get(sessions.cookie_name(settings))
    outcome = await services.db.run_sync(decide, services, snapshot, raw_sid, step, organization)
    return _respond(request, services, outcome)


def decide(
    services: Services,
    snapshot: RequestSnapshot,
    raw_sid: str | None,
    step: str,
    organization: str | None = None,
) -> Outcome:
    """What to answer to an authorization request; `step` is where it came from:
    `authorize`, the consent page (`show`), or the user's answer there (`allow`/`deny`,
    with the `organization` id picked, as posted and not yet checked)."""
    now = db.utcnow()
    login = sessions.find_active(services.digester, services.settings, raw_sid, now=now)
    end_user = _end_user(login)
    try:
        grant = services.oauth.get_consent_grant(snapshot, end_user=end_user)
    except OAuth2Error as error:
        return _refusal(snapshot, error)
    try:
        return _interact(services, snapshot, grant, login, end_user, step, now, organization)
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
) -> Outcome:
    request = grant.request
    client, data = request.client, request.payload.data
    prompts = set(data.get("prompt", "").split())
    if login is None or end_user is None or _needs_sign_in(services, request, login, now):
        if "none" in prompts:
            raise LoginRequiredError()
        return SeeOther(_login_url(snapshot))
    check_admin_scope(request.scope, end_user)
    if step == "deny":
        _record_consent("consent.denied", snapshot, client.id, end_user)
        raise AccessDeniedError()
    if step == "allow":
        acting = in_organization(end_user, organization, request.scope)
        if acting is None:
            return ErrorPage(NOT_YOUR_ORGANIZATION)
        consent.remember(end_user.user.id, client.id, request.scope, now)
        _record_consent("consent.granted", snapshot, client.id, end_user, scope=request.scope)
        end_user = acting
    else:
        choices = _choices(end_user) if ORGANIZATION in request.scope.split() else None
        asking = _needs_consent(request, end_user, prompts)
        if asking or (choices is not None and len(choices) != 1):
            if "none" in prompts:
                raise ConsentRequiredError() if asking else InteractionRequiredError()
            if step == "show":
                return _ask(snapshot, request, end_user, choices, choose_only=not asking)
            return SeeOther("/consent?" + urlencode(snapshot.params))
        if step == "show":
            return SeeOther("/authorize?" + urlencode(snapshot.params))
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
    return EndUser(user, login.id, login.auth_time, login.amr)


def _needs_sign_in(services: Services, request: Any, login: LoginSession, now: datetime) -> bool:
    """OIDC Core §3.1.2.1: `prompt=login` (and `select_account`, as we have no account
    chooser), `max_age` older than the sign-in, or an `id_token_hint` naming someone else."""
    data = request.payload.data
    if set(data.get("prompt", "").split()) & REAUTHENTICATION_PROMPTS:
        return True
    max_age = data.get("max_age")
    if max_age is not None and (now - login.auth_time).total_seconds() > int(max_age):
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
    forces it; clients marked `skip_consent` (first party) never ask; a dynamically
    registered client, whose identity nobody vouched for, always asks (ASVS 10.4.7)."""
    client = request.client
    if client.skip_consent:
        return False
    if "consent" in prompts or client.dynamically_registered:
        return True
    return not consent.covers(end_user.user.id, client.id, request.scope)


def _login_url(snapshot: RequestSnapshot) -> str:
    """`/login?next=/authorize?...`, minus what asked for re-authentication, so the loop ends
    once the user has signed in again (the login page accepts only such a `next`)."""
    params: list[tuple[str, str]] = []
    for name, value in snapshot.params:
        if name in REAUTHENTICATION:
            continue
        if name == "prompt":
            value = " ".join(p for p in value.split() if p not in REAUTHENTICATION_PROMPTS)
            if not value:
                continue
        params.append((name, value))
    query = [("next", "/authorize?" + urlencode(params))]
    hint = snapshot.first("login_hint")
    if hint:
        query.append(("login_hint", hint))
    return "/login?" + urlencode(query)


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
        query=urlencode(snapshot.params),
        email=end_user.user.email,
        unverified_host=urlsplit(redirect_uri).netloc if client.dynamically_registered else None,
        organizations=choices,
        choose_only=choose_only,
    )


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


def _refusal(snapshot: RequestSnapshot, error: OAuth2Error) -> Outcome:
    """An error page unless Authlib trusted a redirect URI with the error."""
    description = error.get_error_description() or ""
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
    form_token, cookie_value = services.csrf.token(request)
    title = "Choose an organization" if ask.choose_only else f"Allow {ask.client_name}?"
    context = {
        "title": title,
        "ask": ask,
        "action": f"/consent?{ask.query}",
        "csrf_field": CSRF_FIELD,
        "csrf_token": form_token,
    }
    response = request.app.state.templates.TemplateResponse(
        request, "consent.html", context, headers=NO_STORE
    )
    services.csrf.set_cookie(response, cookie_value)
    return response
