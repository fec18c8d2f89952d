"""Pushed authorization requests (RFC 9126): the authorization request sent over the back
channel first, the browser carrying only `client_id` and `request_uri`.

POST /par takes what /authorize would take, from an authenticated client (a public one
names itself with `client_id`), validates it exactly as /authorize does (the same Authlib
grant: client, redirect URI, PKCE, scope, resources) and answers errors as JSON. The
pushed parameters are stored behind `urn:ietf:params:oauth:request_uri:<random>`, kept as
a keyed digest.

/authorize?client_id=..&request_uri=.. then uses the pushed parameters and nothing else
from the query (§4): the sign-in and consent steps carry the same two parameters. The
`request_uri` must first be used within `expires_in` (`AUTHSERVER_PAR_TTL`); that first use
claims it for the rest of the interaction (sign-in, consent), and the authorization
response consumes it with one conditional UPDATE, so it answers once (§7.3). A request_uri
we did not issue is `invalid_request_uri`: request objects by reference stay unsupported.

A client registered with `require_pushed_authorization_requests`, or every client when
`AUTHSERVER_REQUIRE_PAR` is on, is refused at /authorize without a pushed request (§5, §6).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from sqlalchemy import JSON, ForeignKey, String, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from authserver import db
from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.dpop import ProofError
from authserver.errors import NO_STORE, NotFound
from authserver.oauth import endpoints
from authserver.oauth.grants import CLIENT_AUTH_METHODS
from authserver.oauth.requests import (
    Params,
    RequestSnapshot,
)
from authserver.security import Digester, new_token
from authserver.services import Services, services
from authserver.settings import Settings

URN_PREFIX = "urn:ietf:params:oauth:request_uri:"
PURPOSE = "request_uri"
#: Once claimed by its first /authorize, a pushed request lasts through sign-in and consent.
INTERACTION = timedelta(minutes=30)
#: Client authentication travels with the push but is no authorization parameter.
CLIENT_AUTH_PARAMS = {"client_secret", "client_assertion", "client_assertion_type"}
INVALID_REQUEST_URI = (
    "invalid_request_uri: the request_uri is unknown, expired, already used or not this "
    "client's. Go back to the application and try again."
)
REQUIRED = (
    "This application must send its authorization request to the pushed authorization "
    "request endpoint first (RFC 9126). Go back to the application and try again."
)
ALREADY_USED = "This authorization request was already answered. Go back to the application."


class PushedRequest(Base):
    __tablename__ = "pushed_authorization_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    #: The pushed parameters as [name, value] pairs, in the order they were sent.
    params: Mapped[list[list[str]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    claimed_at: Mapped[datetime | None]
    used_at: Mapped[datetime | None]


@dataclasses.dataclass(frozen=True)
class Pushed:
    id: str
    params: Params


class Refused(Exception):
    """The authorization request cannot be answered: an error page with `description`."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


# -- storage -------------------------------------------------------------------------------


def create(digester: Digester, *, client_id: str, params: Params, now: datetime, ttl: int) -> str:
    """Store a pushed request; returns its `request_uri`, kept only as a digest."""
    request_uri = URN_PREFIX + new_token()
    current_session().add(
        PushedRequest(
            digest=digester.digest(PURPOSE, request_uri),
            client_id=client_id,
            params=[[name, value] for name, value in params],
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
        )
    )
    current_session().flush()
    return request_uri


def find(digester: Digester, request_uri: str) -> PushedRequest | None:
    if not request_uri.startswith(URN_PREFIX) or len(request_uri) > 200:
        return None
    return current_session().scalar(
        select(PushedRequest).where(PushedRequest.digest == digester.digest(PURPOSE, request_uri))
    )


def claim(row_id: str, now: datetime) -> None:
    """The first /authorize with this request_uri: it now lasts for the interaction."""
    current_session().execute(
        update(PushedRequest)
        .where(
            PushedRequest.id == row_id,
            PushedRequest.claimed_at.is_(None),
            PushedRequest.expires_at > now,
        )
        .values(claimed_at=now, expires_at=now + INTERACTION)
        .execution_options(synchronize_session=False)
    )


def consume(row_id: str, now: datetime) -> bool:
    """True for the one authorization response whose conditional UPDATE touched the row."""
    result = current_session().execute(
        update(PushedRequest)
        .where(
            PushedRequest.id == row_id,
            PushedRequest.used_at.is_(None),
            PushedRequest.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def purge(now: datetime) -> int:
    result = current_session().execute(delete(PushedRequest).where(PushedRequest.expires_at < now))
    return int(rowcount(result) or 0)


def discovery_fields(settings: Settings) -> dict[str, Any]:
    if not settings.pushed_authorization_requests:
        return {}
    return {
        "pushed_authorization_request_endpoint": f"{settings.issuer}/par",
        "require_pushed_authorization_requests": settings.require_par,
    }


# -- /authorize with a request_uri ---------------------------------------------------------


def expand(services: Services, snapshot: RequestSnapshot, now: datetime) -> Pushed | None:
    """The pushed request an authorization request stands for; None when it is an ordinary
    one (allowed unless its client, or the server, requires PAR). Raises `Refused`."""
    settings = services.settings
    if not settings.pushed_authorization_requests:
        return None
    client_id = snapshot.first("client_id")
    request_uri = snapshot.first("request_uri")
    if request_uri is None:
        client = services.oauth.query_client(client_id) if client_id else None
        if settings.require_par or getattr(client, "require_pushed_authorization_requests", False):
            raise Refused(REQUIRED)
        return None
    if not client_id:
        raise Refused("The client_id parameter is required with a request_uri.")
    row = find(services.digester, request_uri)
    if row is None or row.client_id != client_id or row.used_at is not None:
        raise Refused(INVALID_REQUEST_URI)
    if row.expires_at <= now:
        raise Refused(INVALID_REQUEST_URI)
    if row.claimed_at is None:
        claim(row.id, now)
    return Pushed(row.id, tuple((name, value) for name, value in row.params))


# -- POST /par -----------------------------------------------------------------------------


async def push(request: Request) -> Response:
    """RFC 9126 §2: 201 with `request_uri` and `expires_in`, or an RFC 6749 error."""
    svc = services(request)
    if not svc.settings.pushed_authorization_requests:
        raise NotFound("Pushed authorization requests are turned off.")
    return await endpoints.client_form(request, _push)


def _push(services: Services, snapshot: RequestSnapshot) -> Response:
    server, settings = services.oauth, services.settings
    request = server.create_oauth2_request(snapshot)
    try:
        client = server.authenticate_client(request, CLIENT_AUTH_METHODS, "par")
        params = tuple((n, v) for n, v in snapshot.form if n not in CLIENT_AUTH_PARAMS)
        params = _bound_to_proof(services, snapshot, params)
        if any(name == "request_uri" for name, _ in params):
            raise InvalidRequestError("A pushed request must not carry a request_uri.")
        if not any(name == "client_id" for name, _ in params):
            params = (("client_id", client.id), *params)
        pushed = dataclasses.replace(snapshot, query=params, form=())
        server.get_consent_grant(pushed, end_user=None)
    except OAuth2Error as error:
        error.redirect_uri = None
        response: Response = server.handle_error_response(request, error)
        return response
    except ProofError as error:
        return endpoints.proof_refusal(error)
    request_uri = create(
        services.digester,
        client_id=client.id,
        params=params,
        now=db.utcnow(),
        ttl=settings.par_ttl,
    )
    body = {"request_uri": request_uri, "expires_in": settings.par_ttl}
    return JSONResponse(body, status_code=201, headers=NO_STORE)


def _bound_to_proof(services: Services, snapshot: RequestSnapshot, params: Params) -> Params:
    """RFC 9449 §10.1: a DPoP proof sent with the push binds the code to its key, as
    `dpop_jkt` does; when both are sent they must name the same key."""
    if services.dpop is None:
        return params
    jkt = endpoints.with_proof_key(services.dpop, snapshot).dpop_jkt
    if jkt is None:
        return params
    sent = [value for name, value in params if name == "dpop_jkt"]
    if sent and sent != [jkt]:
        raise ProofError("The dpop_jkt is not the thumbprint of the proof's key.")
    return params if sent else (*params, ("dpop_jkt", jkt))
