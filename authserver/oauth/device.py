"""The device authorization grant (RFC 8628): a TV or a command line asks, a person allows.

POST /device_authorization gives the device a `device_code` (its secret for polling) and a
`user_code` the person types at /device in a browser where they are signed in. They see the
consent page for the client and its scopes, allow or deny, and the device, polling /token
with `urn:ietf:params:oauth:grant-type:device_code`, gets `authorization_pending`,
`slow_down` (polling faster than `interval`; the interval grows by 5 s each time, §3.5),
`access_denied`, `expired_token`, or tokens as from the code flow.

Both codes are stored as keyed digests only. The device code is redeemed by one conditional
UPDATE in the token transaction, so of two polls after approval one gets tokens. The user
code is 8 letters from an alphabet without vowels or lookalikes (§6.1: about 34 bits),
typed case- and dash-insensitively; every entry at /device counts against the person and
their IP address (§5.1), so guessing stops answering long before it could succeed.

The approval is tied to the browser session it was given in, like a code: without
`offline_access` the device's tokens end when that session does (OIDC Core §11).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlencode

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AccessDeniedError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc8628 import (
    AuthorizationPendingError,
    ExpiredTokenError,
    SlowDownError,
)
from authlib.oauth2.rfc8628 import DeviceCodeGrant as _DeviceCodeGrant
from sqlalchemy import JSON, ForeignKey, Integer, String, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from authserver import audit, db
from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.errors import NO_STORE, NotFound
from authserver.oauth import clients, consent, endpoints, resources, tokens
from authserver.oauth.authorize import (
    CONSENT_NONCE_FIELD,
    AskConsent,
    consume_consent_nonce,
    document_host,
    render_consent,
)
from authserver.oauth.grants import (
    CLIENT_AUTH_METHODS,
    ForResource,
    check_admin_scope,
    sent_resources,
)
from authserver.oauth.requests import RequestSnapshot
from authserver.oauth.token_format import ORGANIZATION, EndUser
from authserver.security import Digester
from authserver.services import Services, services
from authserver.sessions import models as sessions
from authserver.settings import Settings
from authserver.users import models as users
from authserver.web import CSRF_FIELD, client_ip

GRANT_TYPE = clients.DEVICE_CODE
#: RFC 8628 §6.1's example alphabet: consonants only, no lookalikes (0/O, 1/I/L are absent).
ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
USER_CODE_DRAWS = 3
DEVICE_PURPOSE = "device_code"
USER_CODE_PURPOSE = "device_user_code"
#: §3.5: "the interval MUST be increased by 5 seconds for this and all subsequent requests".
SLOW_DOWN_STEP = 5
ATTEMPT_WINDOW = 15 * 60
REPLAY_MEMORY = timedelta(hours=1)
PENDING, APPROVED, DENIED = "pending", "approved", "denied"
PATH = "/device"

UNKNOWN_CODE = "That code is not valid or has expired. Check the code on your device."
TOO_MANY = "Too many codes were entered. Wait 15 minutes and try again."


class DeviceAuthorization(Base):
    __tablename__ = "device_authorizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    device_code_digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_code_digest: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(1000))
    #: RFC 8707 resource indicators of the device request (None: none was sent).
    resources: Mapped[list[str] | None] = mapped_column(JSON)
    interval: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(10), default=PENDING)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="SET NULL")
    )
    auth_time: Mapped[datetime | None]
    amr: Mapped[str | None] = mapped_column(String(100))
    acr: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    last_polled_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    used_at: Mapped[datetime | None]


# -- storage -------------------------------------------------------------------------------


def normalize_user_code(raw: str | None) -> str | None:
    """The code as stored (upper case, no dashes or spaces), or None when it cannot be one."""
    if not raw or len(raw) > 40:
        return None
    code = "".join(ch for ch in raw.upper() if ch not in "- ")
    if len(code) != USER_CODE_LENGTH or any(ch not in ALPHABET for ch in code):
        return None
    return code


def display(code: str) -> str:
    """XXXX-XXXX, the way the device shows it (§6.1: easier to read and type)."""
    return f"{code[:4]}-{code[4:]}"


def create(
    digester: Digester,
    *,
    client_id: str,
    scope: str,
    resources: list[str] | None,
    now: datetime,
    ttl: int,
    interval: int,
) -> tuple[DeviceAuthorization, str, str]:
    """A new pending authorization; returns it with the device code and the user code,
    which exist only in this return value. A user code equal to one still stored (about
    one chance in 2.5e10 per stored code) is drawn again, in a savepoint."""
    for attempt in range(USER_CODE_DRAWS):
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice(ALPHABET) for _ in range(USER_CODE_LENGTH))
        row = DeviceAuthorization(
            device_code_digest=digester.digest(DEVICE_PURPOSE, device_code),
            user_code_digest=digester.digest(USER_CODE_PURPOSE, user_code),
            client_id=client_id,
            scope=scope,
            resources=resources or None,
            interval=interval,
            status=PENDING,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
        )
        try:
            with current_session().begin_nested():
                current_session().add(row)
            return row, device_code, user_code
        except IntegrityError:
            if attempt == USER_CODE_DRAWS - 1:
                raise
    raise AssertionError("unreachable")


def find_by_device_code(digester: Digester, raw: str) -> DeviceAuthorization | None:
    if not raw or len(raw) > 200:
        return None
    digest = digester.digest(DEVICE_PURPOSE, raw)
    return current_session().scalar(
        select(DeviceAuthorization).where(DeviceAuthorization.device_code_digest == digest)
    )


def find_pending(digester: Digester, user_code: str, now: datetime) -> DeviceAuthorization | None:
    """The pending, unexpired authorization a (normalized) user code names."""
    digest = digester.digest(USER_CODE_PURPOSE, user_code)
    return current_session().scalar(
        select(DeviceAuthorization).where(
            DeviceAuthorization.user_code_digest == digest,
            DeviceAuthorization.status == PENDING,
            DeviceAuthorization.expires_at > now,
        )
    )


def answer(row_id: str, *, end_user: EndUser | None, approved: bool, now: datetime) -> bool:
    """Record the person's answer: True for the one answer that found it still pending."""
    values: dict[str, Any] = {"status": APPROVED if approved else DENIED, "decided_at": now}
    if end_user is not None:
        values.update(
            user_id=end_user.user.id,
            session_id=end_user.session_id,
            auth_time=end_user.auth_time,
            amr=end_user.amr,
            acr=end_user.acr,
        )
    result = current_session().execute(
        update(DeviceAuthorization)
        .where(
            DeviceAuthorization.id == row_id,
            DeviceAuthorization.status == PENDING,
            DeviceAuthorization.expires_at > now,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def poll(row: DeviceAuthorization, now: datetime) -> bool:
    """Note a poll; True when it came sooner than `interval` after the last one, in which
    case the interval grows for this and every later poll (§3.5)."""
    too_fast = (
        row.last_polled_at is not None and (now - row.last_polled_at).total_seconds() < row.interval
    )
    if too_fast:
        row.interval += SLOW_DOWN_STEP
    row.last_polled_at = now
    current_session().flush()
    return too_fast


def redeem(row_id: str, now: datetime) -> bool:
    """Consume an approved authorization: True for the one poll whose conditional UPDATE
    touched the row (docs/security.md K81)."""
    result = current_session().execute(
        update(DeviceAuthorization)
        .where(
            DeviceAuthorization.id == row_id,
            DeviceAuthorization.status == APPROVED,
            DeviceAuthorization.used_at.is_(None),
            DeviceAuthorization.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def purge(now: datetime) -> int:
    result = current_session().execute(
        delete(DeviceAuthorization).where(DeviceAuthorization.expires_at < now - REPLAY_MEMORY)
    )
    return int(rowcount(result) or 0)


def discovery_fields(settings: Settings) -> dict[str, Any]:
    if not settings.device_flow:
        return {}
    return {"device_authorization_endpoint": f"{settings.issuer}/device_authorization"}


# -- POST /device_authorization ------------------------------------------------------------


async def device_authorization(request: Request) -> Response:
    """RFC 8628 §3.1 and §3.2. The client authenticates as at /token; a public client names
    itself with `client_id` (§3.1)."""
    svc = services(request)
    if not svc.settings.device_flow:
        raise NotFound("The device authorization grant is turned off.")
    return await endpoints.client_form(request, _start)


def _start(services: Services, snapshot: RequestSnapshot) -> Response:
    server, settings = services.oauth, services.settings
    request = server.create_oauth2_request(snapshot)
    try:
        client = server.authenticate_client(request, CLIENT_AUTH_METHODS, "device_authorization")
        if not client.check_grant_type(GRANT_TYPE):
            raise UnauthorizedClientError("This client is not registered for the device grant.")
        scope = request.payload.data.get("scope", "")
        if not scope.split():
            raise InvalidScopeError("The scope parameter is required.")
        allowed = client.get_allowed_scope(scope)
        if allowed is None:
            raise InvalidScopeError()
        if ORGANIZATION in allowed.split():
            raise InvalidScopeError("The organization scope is not available on devices.")
        sent = sent_resources(request)
        resources.check_authorization_request(settings, sent, allowed)
    except OAuth2Error as error:
        response: Response = server.handle_error_response(request, error)
        return response
    now = db.utcnow()
    row, device_code, user_code = create(
        services.digester,
        client_id=client.id,
        scope=allowed,
        resources=resources.parse(sent),
        now=now,
        ttl=settings.device_code_ttl,
        interval=settings.device_poll_interval,
    )
    verification_uri = f"{settings.issuer}{PATH}"
    body = {
        "device_code": device_code,
        "user_code": display(user_code),
        "verification_uri": verification_uri,
        "verification_uri_complete": f"{verification_uri}?"
        + urlencode({"user_code": display(user_code)}),
        "expires_in": settings.device_code_ttl,
        "interval": row.interval,
    }
    return JSONResponse(body, headers=NO_STORE)


# -- POST /token (grant_type=urn:ietf:params:oauth:grant-type:device_code) -----------------


class DeviceCodeGrant(ForResource, _DeviceCodeGrant):
    """§3.4 and §3.5 with the checks Authlib leaves open: a device code of another client is
    `invalid_grant` (as a code is, docs/security.md B27), and redemption is single-use."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    settings: ClassVar[Settings]
    digester: ClassVar[Digester]

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.now = db.utcnow()

    def validate_token_request(self) -> None:
        device_code = self.request.payload.data.get("device_code")
        if not device_code:
            raise InvalidRequestError("The device_code parameter is required.")
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("This client is not registered for the device grant.")
        found = find_by_device_code(self.digester, device_code)
        if found is None or found.client_id != client.id:
            raise InvalidGrantError("The device code is invalid.")
        if found.used_at is not None:
            raise InvalidGrantError("The device code has already been used.")
        if found.expires_at <= self.now:
            raise ExpiredTokenError("The device code has expired: start again.")
        if found.status == DENIED:
            raise AccessDeniedError("The person denied the request.")
        if found.status == PENDING:
            if poll(found, self.now):
                raise SlowDownError(f"Poll at most every {found.interval} seconds.")
            raise AuthorizationPendingError("The person has not answered yet.")
        end_user = self._end_user(found)
        if end_user is None:
            raise InvalidGrantError("The authorization is no longer valid.")
        self.request.client = client
        self.request.user = end_user
        self.request.credential = found
        self.request.audience = resources.for_token(
            self.settings,
            found.resources or [],
            sent_resources(self.request),
            found.scope,
            scope_sent=False,
        )

    @staticmethod
    def _end_user(found: DeviceAuthorization) -> EndUser | None:
        user = users.get(found.user_id) if found.user_id else None
        if user is None or not user.is_active or found.auth_time is None:
            return None
        return EndUser(user, found.session_id, found.auth_time, found.amr or "pwd", found.acr)

    @hooked
    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """Consume first, in this transaction, then issue as the code grant does: one token
        family per approval, a refresh token when the client may refresh."""
        found: DeviceAuthorization = self.request.credential
        client, end_user = self.request.client, self.request.user
        if not redeem(found.id, self.now):
            raise InvalidGrantError("The device code has already been used.")
        token = self.generate_token(
            user=end_user,
            scope=found.scope,
            include_refresh_token=client.check_grant_type("refresh_token"),
        )
        tokens.store_grant(
            self.digester,
            self.settings,
            self.request,
            token,
            code_id=None,
            scope=found.scope,
            resources=found.resources,
            now=self.now,
        )
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


# -- GET/POST /device: the person's side ---------------------------------------------------


@dataclass(frozen=True)
class CodeForm:
    typed: str
    error: str = ""
    status: int = 200


@dataclass(frozen=True)
class Message:
    title: str
    text: str
    status: int = 200
    alert: bool = False


@dataclass(frozen=True)
class ShowConsent:
    ask: Any
    action: str


@dataclass(frozen=True)
class SignIn:
    typed: str


Outcome = CodeForm | Message | ShowConsent | SignIn


async def device_page(request: Request) -> Response:
    """GET shows the code form (pre-filled from `verification_uri_complete`, never
    submitted by itself: §5.4 wants the person to confirm which device they connect);
    POST looks a code up and shows the consent page, or, with `decision`, records the
    answer. Sign-in comes first, and brings the person back here with the code."""
    svc = services(request)
    settings = svc.settings
    if not settings.device_flow:
        raise NotFound("The device authorization grant is turned off.")
    raw_sid = request.cookies.get(sessions.cookie_name(settings))
    typed = request.query_params.get("user_code") or ""
    outcome: Outcome
    if request.method == "GET":
        signed_in = await svc.db.run_sync(sessions.find_active, svc.digester, settings, raw_sid)
        outcome = CodeForm(typed) if signed_in is not None else SignIn(typed)
        return _respond(request, svc, outcome)
    form = await request.form()
    token = form.get(CSRF_FIELD)
    svc.csrf.verify(request, token if isinstance(token, str) else None)
    sent, decision = form.get("user_code"), form.get("decision")
    nonce = form.get(CONSENT_NONCE_FIELD)
    outcome = await svc.db.run_sync(
        answer_page,
        svc,
        raw_sid,
        client_ip(request),
        sent if isinstance(sent, str) else typed,
        decision if decision in ("allow", "deny") else None,
        nonce if isinstance(nonce, str) else None,
    )
    return _respond(request, svc, outcome)


def answer_page(
    services: Services,
    raw_sid: str | None,
    ip: str,
    typed: str,
    decision: Any,
    nonce: str | None,
) -> Outcome:
    """One POST of /device. Every POST counts against the person and their IP address
    before anything is looked up; a code found is forgiven, so only wrong codes (and
    answers) use up the budget (RFC 8628 §5.1, docs/security.md I71)."""
    now = db.utcnow()
    login = sessions.find_active(services.digester, services.settings, raw_sid, now=now)
    user = users.get(login.user_id) if login is not None else None
    if login is None or user is None:
        return SignIn(typed)
    end_user = EndUser(user, login.id, login.auth_time, login.amr)
    counted = (("device-code-ip", ip), ("device-code-user", user.id))
    limit = services.settings.device_code_attempts
    over = [services.limiter.check(kind, key, limit, ATTEMPT_WINDOW) for kind, key in counted]
    if any(retry is not None for retry in over):
        return CodeForm(typed, TOO_MANY, 429)
    code = normalize_user_code(typed)
    found = find_pending(services.digester, code, now) if code else None
    client = clients.query(found.client_id) if found is not None else None
    if code is None or found is None or client is None:
        return CodeForm(typed, UNKNOWN_CODE, 400)
    binding = _binding(services, found, end_user)
    action = f"{PATH}?{urlencode({'user_code': display(code)})}"
    if decision is None:
        for kind, key in counted:
            services.limiter.forgive(kind, key, ATTEMPT_WINDOW)
        ask = AskConsent(
            client_name=client.name,
            scopes=consent.describe(found.scope, client.name),
            query="",
            email=user.email,
            document_host=document_host(client),
            binding=binding,
        )
        return ShowConsent(ask, action)
    refused = consume_consent_nonce(services, nonce, binding)
    if refused is not None:
        return Message("Nothing was allowed", refused.detail, 400, alert=True)
    approved = decision == "allow"
    if approved:
        try:
            check_admin_scope(found.scope, end_user)
        except OAuth2Error as error:
            answer(found.id, end_user=None, approved=False, now=now)
            return Message("Not allowed", str(error.description), 403, alert=True)
    if not answer(found.id, end_user=end_user if approved else None, approved=approved, now=now):
        return CodeForm(typed, UNKNOWN_CODE, 400)
    if approved:
        consent.remember(user.id, client.id, found.scope, now)
    audit.record(
        "consent.granted" if approved else "consent.denied",
        actor_type="user",
        actor_id=user.id,
        ip=ip,
        target_type="client",
        target_id=client.id,
        scope=found.scope,
        grant_type=GRANT_TYPE,
    )
    if approved:
        return Message("Device connected", f"{client.name} is connected. Return to your device.")
    return Message("Request denied", f"{client.name} was not given access to your account.")


def _binding(services: Services, found: DeviceAuthorization, end_user: EndUser) -> str:
    """What a device consent form was shown for: this authorization, its client and scope,
    the person and their browser session (as the code flow's binding, docs/security.md H65)."""
    parts = [found.id, found.client_id, found.scope, end_user.user.id, end_user.session_id or ""]
    return services.digester.digest("device_consent.binding", "\n".join(parts))


def _respond(request: Request, services: Services, outcome: Outcome) -> Response:
    templates = request.app.state.templates
    if isinstance(outcome, SignIn):
        code = normalize_user_code(outcome.typed)
        target = PATH + (f"?{urlencode({'user_code': display(code)})}" if code else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), 303, headers=NO_STORE)
    if isinstance(outcome, ShowConsent):
        return render_consent(request, services, outcome.ask, action=outcome.action)
    if isinstance(outcome, Message):
        context = {"title": outcome.title, "text": outcome.text, "alert": outcome.alert}
        return templates.TemplateResponse(
            request, "message.html", context, status_code=outcome.status, headers=NO_STORE
        )
    form_token, cookie_value = services.csrf.token(request)
    code = normalize_user_code(outcome.typed)
    context = {
        "title": "Connect a device",
        "user_code": display(code) if code else outcome.typed[:40],
        "error": outcome.error,
        "csrf_field": CSRF_FIELD,
        "csrf_token": form_token,
    }
    response = templates.TemplateResponse(
        request, "device.html", context, status_code=outcome.status, headers=NO_STORE
    )
    services.csrf.set_cookie(response, cookie_value)
    return response
