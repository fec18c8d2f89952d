"""OpenID Connect Back-Channel Logout 1.0: when a browser session ends, every client signed
in through it that registered a `backchannel_logout_uri` is told so, server to server.

Ending a session (/logout, the sessions API, /account, a deactivation or password change)
writes one outbox row per (client, session) in the same transaction, through the
`AppAccess.sessions_ended` port (`OAuthAppAccess`); nothing is sent while the person waits
(docs/security.md P121).
The worker in the app's lifespan (`deliver_periodically`) sends what is due: it claims one
row at a time with a conditional UPDATE that gives it a lease, so two workers or instances
never send the same row at once (docs/security.md P119), builds a signed logout token
(`logout_token`) and POSTs it through the one outbound client (`authserver.fetch`, so the
URI gets the same address checks as every fetch, docs/security.md P118). A receiver that is
down is tried again with growing delays, `MAX_ATTEMPTS` times over hours, and the rows
survive a restart; then the row is dropped with an audit event (docs/security.md P120).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from authserver import audit
from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.errors import Invalid
from authserver.fetch import Fetcher, FetchError
from authserver.oauth import clients
from authserver.oauth.clients import Client
from authserver.oauth.tokens import TokenFamily
from authserver.security import new_token
from authserver.services import Services
from authserver.settings import Settings

log = logging.getLogger("authserver.backchannel")

URI_KEY = clients.BACKCHANNEL_URI
SESSION_REQUIRED_KEY = clients.BACKCHANNEL_SESSION_REQUIRED
EVENT = "http://schemas.openid.net/event/backchannel-logout"
TYP = "logout+jwt"
#: A logout token is used at once; it lives only long enough to cross a slow network.
TOKEN_TTL = 120
MAX_ATTEMPTS = 12
FIRST_DELAY = 5
MAX_DELAY = 3600
#: Longer than one send can take (`fetch.DEADLINE`): a worker that dies mid-send frees
#: its row after this.
LEASE_SECONDS = 60
#: How often each instance looks for due rows.
POLL_SECONDS = 2.0
#: Rows one step sends at most, so a long queue does not hold the step for ever.
BATCH = 50


class BackchannelLogout(Base):
    """One logout token owed to one client for one ended session (the outbox)."""

    __tablename__ = "backchannel_logouts"
    __table_args__ = (UniqueConstraint("client_id", "session_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    #: The ended session and its person, as plain values: the session row is purged and
    #: a deleted person's rows go, while the token still has to name them.
    session_id: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: When the row may be claimed: due now, after a backoff, or when a lease runs out.
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    #: Who holds the row while sending; only that worker may settle it.
    lease: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(String(200))


# -- registration ----------------------------------------------------------------------------


def check_uri(fetcher: Fetcher, uri: Any) -> str:
    """A `backchannel_logout_uri` the outbound client will POST to: https (plain http only
    for a trusted loopback host), no fragment, no user info, no non-public address
    (OIDC Back-Channel Logout §2.2, docs/security.md P118)."""
    if not isinstance(uri, str) or not uri or not uri.isprintable() or " " in uri:
        raise Invalid(f"{URI_KEY} must be an https URL.")
    try:
        fetcher.check_url(uri)
    except FetchError as error:
        raise Invalid(f"{URI_KEY} is refused: {error.reason}") from None
    return uri


def registered(fetcher: Fetcher, uri: Any, session_required: Any) -> dict[str, Any]:
    """The `Client.info` members for a registration: none without a URI."""
    if session_required is not None and not isinstance(session_required, bool):
        raise Invalid(f"{SESSION_REQUIRED_KEY} must be true or false.")
    if not uri:
        if session_required:
            raise Invalid(f"{SESSION_REQUIRED_KEY} needs a {URI_KEY}.")
        return {}
    return {URI_KEY: check_uri(fetcher, uri), SESSION_REQUIRED_KEY: bool(session_required)}


def register(
    client: Client, fetcher: Fetcher, uri: str | None, session_required: bool | None = None
) -> None:
    """Set (a URI) or clear ("") the client's back-channel logout registration; None
    leaves it as it is."""
    if uri is None:
        if session_required:
            raise Invalid(f"{SESSION_REQUIRED_KEY} needs a {URI_KEY}.")
        return
    kept = {
        name: value
        for name, value in (client.info or {}).items()
        if name not in (URI_KEY, SESSION_REQUIRED_KEY)
    }
    client.info = {**kept, **registered(fetcher, uri, session_required)}


def discovery_fields(settings: Settings) -> dict[str, Any]:
    """Every logout token carries `sid`, so session-required clients are served too."""
    if not settings.backchannel_logout:
        return {}
    return {"backchannel_logout_supported": True, "backchannel_logout_session_supported": True}


# -- the outbox --------------------------------------------------------------------------------


def enqueue(session_ids: Sequence[str], now: datetime | None = None) -> int:
    """Owe a logout token to every active client that holds tokens from these sessions and
    registered a URI: one row per (client, session), in the caller's transaction."""
    if not session_ids:
        return 0
    now = now or utcnow()
    held = current_session().execute(
        select(TokenFamily.client_id, TokenFamily.session_id, TokenFamily.user_id)
        .where(TokenFamily.session_id.in_(list(session_ids)), TokenFamily.expires_at > now)
        .distinct()
    )
    owed = 0
    for client_id, session_id, user_id in held:
        client = clients.query(client_id)
        if (
            client is None
            or not clients.backchannel_logout(client)
            or session_id is None
            or user_id is None
        ):
            continue
        current_session().add(
            BackchannelLogout(
                client_id=client_id,
                session_id=session_id,
                user_id=user_id,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
            )
        )
        owed += 1
    current_session().flush()
    return owed


@dataclass(frozen=True)
class Claimed:
    id: str
    lease: str
    client_id: str
    session_id: str
    user_id: str
    attempts: int


def _due(now: datetime) -> Any:
    return BackchannelLogout.next_attempt_at <= now


def claim(now: datetime) -> Claimed | None:
    """Take the next due row for `LEASE_SECONDS`. The conditional UPDATE is the lock: of
    two workers that picked the same row, one changes it and the other finds it no longer
    due and tries the next."""
    candidates = current_session().scalars(
        select(BackchannelLogout.id)
        .where(_due(now))
        .order_by(BackchannelLogout.next_attempt_at)
        .limit(5)
    )
    for row_id in list(candidates):
        lease = new_token(16)
        taken = current_session().execute(
            update(BackchannelLogout)
            .where(BackchannelLogout.id == row_id, _due(now))
            .values(
                lease=lease,
                attempts=BackchannelLogout.attempts + 1,
                next_attempt_at=now + timedelta(seconds=LEASE_SECONDS),
            )
            .execution_options(synchronize_session=False)
        )
        if rowcount(taken) == 1:
            row = current_session().get(BackchannelLogout, row_id, populate_existing=True)
            assert row is not None
            return Claimed(row.id, lease, row.client_id, row.session_id, row.user_id, row.attempts)
    return None


def _held(claimed: Claimed) -> Any:
    return (BackchannelLogout.id == claimed.id) & (BackchannelLogout.lease == claimed.lease)


def delivered(claimed: Claimed) -> bool:
    """Forget a sent row, if this worker still holds it."""
    result = current_session().execute(delete(BackchannelLogout).where(_held(claimed)))
    return rowcount(result) == 1


def backoff(attempts: int) -> int:
    """Seconds before the next try: doubling from `FIRST_DELAY`, at most `MAX_DELAY`."""
    return int(min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, attempts - 1)))


def failed(claimed: Claimed, reason: str, now: datetime) -> bool:
    """Try again later, or after `MAX_ATTEMPTS` give up with an audit event. True when the
    row was dropped."""
    if claimed.attempts >= MAX_ATTEMPTS:
        result = current_session().execute(delete(BackchannelLogout).where(_held(claimed)))
        if rowcount(result) == 1:
            audit.record(
                "backchannel_logout.dropped",
                outcome="failure",
                target_type="client",
                target_id=claimed.client_id,
                session_id=claimed.session_id,
                attempts=claimed.attempts,
                reason=reason[:200],
            )
            return True
        return False
    current_session().execute(
        update(BackchannelLogout)
        .where(_held(claimed))
        .values(
            lease=None,
            last_error=reason[:200],
            next_attempt_at=now + timedelta(seconds=backoff(claimed.attempts)),
        )
        .execution_options(synchronize_session=False)
    )
    return False


# -- sending -----------------------------------------------------------------------------------


def logout_token(services: Services, client: Client, claimed: Claimed, now: datetime) -> str:
    """OIDC Back-Channel Logout §2.4: iss, aud, iat, exp, jti, the logout event, `sid` (the
    value the client's ID tokens carry) and `sub`; never a `nonce`. `typ: logout+jwt`,
    so it is never taken for an ID token, signed with the algorithm the client gets its ID
    tokens in (docs/security.md P117)."""
    issued = int(now.timestamp())
    claims = {
        "iss": services.settings.issuer,
        "aud": client.id,
        "iat": issued,
        "exp": issued + TOKEN_TTL,
        "jti": new_token(16),
        "events": {EVENT: {}},
        "sid": claimed.session_id,
        "sub": claimed.user_id,
    }
    alg = client.id_token_signed_response_alg or "RS256"
    return services.keystore.sign(claims, alg=alg, typ=TYP)


@dataclass
class Step:
    """What one step of the worker did."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0


def deliver_due(services: Services, *, now: datetime | None = None, limit: int = BATCH) -> Step:
    """Send what is due at `now`, one row at a time: claim (one transaction), POST (none:
    no connection is held while a receiver answers), settle (one transaction). `now` only
    schedules (tests move it); the tokens always carry the real time."""
    step = Step()
    for _ in range(limit):
        at = now or utcnow()
        claimed = services.db.call(claim, at)
        if claimed is None:
            break
        client = services.db.call(clients.query, claimed.client_id)
        uri = clients.backchannel_logout(client).get(URI_KEY) if client is not None else None
        if client is None or uri is None:
            services.db.call(delivered, claimed)
            continue
        try:
            token = logout_token(services, client, claimed, utcnow())
            services.fetcher.call(
                "POST", uri, form=[("logout_token", token)], accept=(200, 204), parse=False
            )
        except FetchError as error:
            reason = error.reason
        except Exception as error:  # a key store problem: logged, tried again later
            log.exception("back-channel logout to %s failed", claimed.client_id)
            reason = type(error).__name__
        else:
            services.db.call(delivered, claimed)
            step.sent += 1
            continue
        step.failed += 1
        if services.db.call(failed, claimed, reason, now or utcnow()):
            step.dropped += 1
    return step


def any_due(now: datetime) -> bool:
    return (
        current_session().scalar(select(BackchannelLogout.id).where(_due(now)).limit(1)) is not None
    )


async def deliver_periodically(services: Services, interval: float = POLL_SECONDS) -> None:
    """Every instance runs this in its lifespan; leases keep them from sending twice. The
    idle check waits its turn with the requests' units of work (`Database.run_sync`), so
    polling an empty outbox never competes with them for SQLite's write lock. A failed
    round is logged and the next one tries again."""
    while True:
        await anyio.sleep(interval)
        try:
            if not await services.db.run_sync(any_due, utcnow()):
                continue
            step = await anyio.to_thread.run_sync(deliver_due, services)
        except Exception:
            log.exception("back-channel logout delivery failed")
        else:
            if step.sent or step.failed:
                log.info("back-channel logout", extra={"fields": vars(step)})
