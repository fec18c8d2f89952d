"""RP-Initiated Logout 1.0 at /logout (docs/security.md H68, ASVS 10.6.2).

A relying party sends the browser here, by GET or by form POST, with `id_token_hint`,
`post_logout_redirect_uri`, `state` and `client_id`. An ID token we signed, for the session
this browser holds, proves the RP the user signed in to is asking, so then we sign out at once
and return the browser to a post-logout URI registered for that client. Anything less could
come from any web page (forced logout), so the user is asked first, and the browser is never
sent to an address the client has not registered (OP as open redirector, RFC 9700 §4.11.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from authserver import audit
from authserver.oauth import clients, oidc
from authserver.oauth.clients import Client
from authserver.rendering import render
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.sessions.models import LoginSession
from authserver.sessions.pages import clear_session_cookie
from authserver.users import models as users
from authserver.web import CSRF_FIELD, client_ip, read_form

NOT_VERIFIED = "This sign-out request could not be verified, so nothing happened yet."
NOT_REGISTERED = (
    "The application asked to send you to an address it has not registered, so you will "
    "stay on this page."
)


@dataclass(frozen=True)
class LogoutRequest:
    id_token_hint: str = ""
    post_logout_redirect_uri: str = ""
    state: str = ""
    client_id: str = ""

    @classmethod
    def read(cls, source: Mapping[str, str]) -> LogoutRequest:
        """OIDC RP-Initiated Logout §2: parameters in the query (GET) or the form body (POST)."""
        return cls(**{f.name: source.get(f.name, "") for f in fields(cls)})

    @property
    def empty(self) -> bool:
        return not any(astuple(self))


@dataclass(frozen=True)
class Outcome:
    """What to answer: `redirect_to`, else the confirmation page (`ask`) or the signed-out page.

    `return_to` is a registered post-logout URI with `state` that the pages offer as a link;
    only a proven request is redirected (`redirect_to`) without the user's click.
    """

    ask: bool = False
    redirect_to: str | None = None
    return_to: str | None = None
    forward: LogoutRequest | None = None
    email: str = ""
    client_name: str = ""
    error: str | None = None


async def logout(request: Request) -> Response:
    svc = services(request)
    form = await read_form(request) if request.method == "POST" else None
    params = LogoutRequest.read(request.query_params if form is None else form)
    raw_sid = request.cookies.get(sessions.cookie_name(svc.settings))
    ip = client_ip(request)
    if form is not None and (CSRF_FIELD in form or params.empty):
        svc.csrf.verify(request, form.get(CSRF_FIELD))
        outcome = await svc.db.run_sync(_confirmed, svc, raw_sid, params, ip)
    else:
        claims = oidc.verify_id_token_hint(
            svc.keystore, svc.settings.issuer, params.id_token_hint, params.client_id
        )
        outcome = await svc.db.run_sync(_requested, svc, raw_sid, params, claims, ip)
    return _respond(request, svc, outcome)


def _requested(
    services: Services,
    raw_sid: str | None,
    params: LogoutRequest,
    claims: dict[str, Any] | None,
    ip: str,
) -> Outcome:
    """Decide a request from an RP (or a bare visit): sign out only when the hint proves it."""
    current = sessions.find_active(services.digester, services.settings, raw_sid, touch=False)
    client = _client(params.client_id or _client_id_of(claims))
    return_to = _return_to(client, params)
    if params.post_logout_redirect_uri and return_to is None:
        return _ask(current, client, params, error=NOT_REGISTERED)
    if claims is None or (current is not None and not _same_session(claims, current)):
        error = NOT_VERIFIED if params.id_token_hint and claims is None else None
        return _ask(current, client, params, return_to=return_to, error=error)
    if current is not None:
        _end(services, current, ip, client, via="id_token_hint")
    return Outcome(redirect_to=return_to, client_name=client.name if client else "")


def _confirmed(services: Services, raw_sid: str | None, params: LogoutRequest, ip: str) -> Outcome:
    """The user pressed Sign out on our own page (CSRF checked by the caller)."""
    current = sessions.find_active(services.digester, services.settings, raw_sid, touch=False)
    client = _client(params.client_id)
    if current is not None:
        _end(services, current, ip, client, via="confirmation")
    return Outcome(return_to=_return_to(client, params), client_name=client.name if client else "")


def _ask(
    current: LoginSession | None,
    client: Client | None,
    params: LogoutRequest,
    *,
    return_to: str | None = None,
    error: str | None = None,
) -> Outcome:
    """The confirmation page when there is a session to end, else the signed-out page. A
    registered return address rides along in the form, to be offered once the user confirms."""
    user = users.get(current.user_id) if current is not None else None
    forward = None
    if return_to is not None and client is not None:
        forward = LogoutRequest(
            post_logout_redirect_uri=params.post_logout_redirect_uri,
            state=params.state,
            client_id=client.id,
        )
    return Outcome(
        ask=user is not None,
        return_to=return_to,
        forward=forward,
        email=user.email if user is not None else "",
        client_name=client.name if client else "",
        error=error,
    )


def _end(
    services: Services, current: LoginSession, ip: str, client: Client | None, *, via: str
) -> None:
    """End the session; refresh tokens bound to it stop working by reference, and the
    apps signed in through it hear so over the back channel (`backchannel`)."""
    sessions.end(services.app_access, current.id)
    audit.record(
        "logout",
        actor_type="user",
        actor_id=current.user_id,
        ip=ip,
        target_type="session",
        target_id=current.id,
        client_id=client.id if client else None,
        via=via,
    )


def _respond(request: Request, services: Services, outcome: Outcome) -> Response:
    status = 400 if outcome.error else 200
    context = {
        "email": outcome.email,
        "client_name": outcome.client_name,
        "return_to": outcome.return_to,
        "forward": outcome.forward,
        "error": outcome.error,
    }
    if outcome.ask:
        return render(request, "logout.html", context, status=status)
    response: Response
    if outcome.redirect_to is not None:
        response = RedirectResponse(outcome.redirect_to, status_code=303)
    else:
        response = render(request, "logged_out.html", context, status=status)
    clear_session_cookie(response, services.settings)
    return response


def _client(client_id: str) -> Client | None:
    if not clients.plausible_client_id(client_id):
        return None
    client = clients.get(client_id)
    return client if client is not None and client.is_active else None


def _return_to(client: Client | None, params: LogoutRequest) -> str | None:
    """The post-logout URI with `state`, when registered for the client byte for byte."""
    uri = params.post_logout_redirect_uri
    if client is None or not uri or uri not in client.post_logout_redirect_uris:
        return None
    if not params.state:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode({'state': params.state})}"


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return [value for value in values if isinstance(value, str)]


def _client_id_of(claims: dict[str, Any] | None) -> str:
    """The client an ID token was issued to: `azp`, or its only audience (OIDC Core §2)."""
    if claims is None:
        return ""
    azp = claims.get("azp")
    if isinstance(azp, str):
        return azp
    audiences = _audiences(claims)
    return audiences[0] if len(audiences) == 1 else ""


def _same_session(claims: dict[str, Any], current: LoginSession) -> bool:
    """Whether the hint was issued in this browser's session: by `sid`, else by `sub`."""
    sid = claims.get("sid")
    if sid is not None:
        return bool(sid == current.id)
    return bool(claims.get("sub") == current.user_id)
