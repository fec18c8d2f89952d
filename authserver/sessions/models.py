"""Server-side browser sessions: the database holds the state, the cookie only a random id."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    ForeignKey,
    String,
    delete,
    false,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from authserver import web
from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.errors import NotFound
from authserver.security import Digester, new_token
from authserver.settings import Settings
from authserver.users import models as users
from authserver.users.models import User

if TYPE_CHECKING:
    from authserver.actors import Admin, Caller
    from authserver.app_access import AppAccess


class LoginSession(Base):
    __tablename__ = "login_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    user_agent: Mapped[str] = mapped_column(String(500), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    auth_time: Mapped[datetime]
    amr: Mapped[str] = mapped_column(String(100), default="pwd")
    acr: Mapped[str | None] = mapped_column(String(100))
    #: A password was right but the second factor is still to come: not yet a session.
    awaiting_factor: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: When each kind of factor was last used in this session.
    password_at: Mapped[datetime | None]
    otp_at: Mapped[datetime | None]
    passkey_at: Mapped[datetime | None]
    recovery_code_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    idle_expires_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]

    def is_active(self, now: datetime) -> bool:
        return self.is_open(now) and not self.awaiting_factor

    def is_open(self, now: datetime) -> bool:
        """Not ended nor expired, whether or not the second factor is still awaited."""
        return self.ended_at is None and now < self.idle_expires_at and now < self.expires_at


def purge(now: datetime) -> int:
    """Drop sessions that can no longer be used: ended, idle too long, or past their lifetime."""
    expired = or_(
        LoginSession.ended_at.is_not(None),
        LoginSession.idle_expires_at < now,
        LoginSession.expires_at < now,
    )
    result = current_session().execute(delete(LoginSession).where(expired))
    return int(rowcount(result) or 0)


SID_PURPOSE = "session"
#: A right password waits this long for its second factor, and no longer.
AWAITING_FACTOR_TTL = 10 * 60
COOKIE = "sid"
NO_SUCH_SESSION = "No such session."


def cookie_name(settings: Settings) -> str:
    return web.cookie_name(COOKIE, settings.is_https)


def start(
    digester: Digester,
    settings: Settings,
    *,
    user_id: str,
    user_agent: str = "",
    ip: str = "",
    amr: str = "pwd",
    acr: str | None = None,
    awaiting_factor: bool = False,
    factor_times: dict[str, datetime] | None = None,
    auth_time: datetime | None = None,
    now: datetime | None = None,
) -> tuple[LoginSession, str]:
    """Open a session for a user who just signed in; returns it with the raw cookie value.

    Each sign-in gets a fresh random id, so an id planted before sign-in is worthless after.
    With `awaiting_factor` it is not a session yet (`find_active` ignores it) until
    `complete_factor` records the second factor, within `AWAITING_FACTOR_TTL`.
    `factor_times` names the columns of the factors used (`password_at`, `passkey_at`, ...).
    `auth_time`: when the person authenticated, if not now (an upstream provider's sign-in).
    """
    now = now or utcnow()
    raw_sid = new_token()
    idle = settings.session_idle_ttl
    if awaiting_factor:
        idle = min(idle, AWAITING_FACTOR_TTL)
    login_session = LoginSession(
        digest=digester.digest(SID_PURPOSE, raw_sid),
        user_id=user_id,
        user_agent=user_agent[:500],
        ip=ip[:64],
        auth_time=auth_time or now,
        amr=amr[:100],
        acr=acr,
        awaiting_factor=awaiting_factor,
        **(factor_times if factor_times is not None else {"password_at": now}),
        created_at=now,
        last_seen_at=now,
        idle_expires_at=now + timedelta(seconds=idle),
        expires_at=now + timedelta(seconds=settings.session_ttl),
    )
    current_session().add(login_session)
    current_session().flush()
    return login_session, raw_sid


def find_active(
    digester: Digester,
    settings: Settings,
    raw_sid: str | None,
    *,
    now: datetime | None = None,
    touch: bool = True,
    awaiting: bool = False,
) -> LoginSession | None:
    """The live session behind a cookie value, or None; slides the idle expiry when touched.

    A session of a deactivated user is not live, so disabling an account signs it out at once.
    One still awaiting its second factor counts only with `awaiting` (the second-step page).
    """
    if not raw_sid or len(raw_sid) > 200:
        return None
    now = now or utcnow()
    found = current_session().scalar(
        select(LoginSession).where(LoginSession.digest == digester.digest(SID_PURPOSE, raw_sid))
    )
    if found is None or not (found.is_open(now) if awaiting else found.is_active(now)):
        return None
    user = current_session().get(User, found.user_id)
    if user is None or not user.is_active:
        return None
    if touch and not found.awaiting_factor:
        found.last_seen_at = now
        found.idle_expires_at = min(
            now + timedelta(seconds=settings.session_idle_ttl), found.expires_at
        )
    return found


def complete_factor(
    session_id: str, *, amr: str, acr: str, factor_column: str, now: datetime | None = None
) -> bool:
    """Record a second factor on an open session (completing a sign-in, or stepping up one
    that had a password only); False if the session ended meanwhile."""
    now = now or utcnow()
    result = current_session().execute(
        update(LoginSession)
        .where(LoginSession.id == session_id, LoginSession.ended_at.is_(None))
        .values(amr=amr, acr=acr, awaiting_factor=False, **{factor_column: now})
        .execution_options(synchronize_session="fetch")
    )
    return bool(rowcount(result))


def _end_where(access: AppAccess, *conditions: ColumnElement[bool], now: datetime) -> list[str]:
    """End the sessions matching `conditions` in one UPDATE, and tell the apps signed in
    through them (`AppAccess.sessions_ended`) in the same transaction."""
    result = current_session().execute(
        update(LoginSession)
        .where(*conditions)
        .values(ended_at=now)
        .returning(LoginSession.id)
        .execution_options(synchronize_session="fetch")
    )
    ended = list(result.scalars())
    if ended:
        access.sessions_ended(ended)
    return ended


def end(access: AppAccess, session_id: str, *, now: datetime | None = None) -> bool:
    """End a session. Tokens bound to it die by reference: they check the session is live."""
    conditions = (LoginSession.id == session_id, LoginSession.ended_at.is_(None))
    return bool(_end_where(access, *conditions, now=now or utcnow()))


def end_all_for_user(
    access: AppAccess,
    user_id: str,
    *,
    except_session_id: str | None = None,
    now: datetime | None = None,
) -> int:
    """End every live session of a user in one UPDATE, sparing `except_session_id` if given.

    A password reset ends them all; a password change spares the browser that made it.
    """
    conditions = [LoginSession.user_id == user_id, LoginSession.ended_at.is_(None)]
    if except_session_id is not None:
        conditions.append(LoginSession.id != except_session_id)
    return len(_end_where(access, *conditions, now=now or utcnow()))


def end_everything(
    access: AppAccess, user_id: str, *, reason: str, keep_session_id: str | None = None
) -> dict[str, Any]:
    """End a user's sessions and revoke their token families (all but `keep_session_id`'s),
    so that nothing signed in before survives a reactivation or a password change."""
    ended = end_all_for_user(access, user_id, except_session_id=keep_session_id)
    revoked = access.end_grants(user_id, reason=reason, keep_session_id=keep_session_id)
    return {"sessions_ended": ended, "token_families_revoked": revoked}


def change_password(
    access: AppAccess, user: User, password_hash: str, *, keep_session_id: str | None
) -> dict[str, Any]:
    """Set a person's new password (from /account or the API): outstanding reset links die
    with the old password, and everything but `keep_session_id` ends, offline grants too."""
    users.set_password(user, password_hash)
    users.revoke_links(user.id, users.RESET_PASSWORD)
    return end_everything(
        access, user.id, reason="password_changed", keep_session_id=keep_session_id
    )


def end_own(access: AppAccess, actor: Admin, user_id: str, session_id: str) -> None:
    """End one of `user_id`'s live sessions, or NotFound (the same for anyone else's)."""
    if not end_for_user(access, user_id, session_id):
        raise NotFound(NO_SUCH_SESSION)
    actor.record("session.ended", "session", session_id, user_id=user_id)


def end_others(access: AppAccess, actor: Caller, keep_session_id: str | None) -> int:
    """End all of the caller's sessions but `keep_session_id` (the one acting)."""
    ended = end_all_for_user(access, actor.user_id, except_session_id=keep_session_id)
    actor.record("sessions.ended", "user", actor.user_id, sessions_ended=ended)
    return ended


def _live(now: datetime) -> ColumnElement[bool]:
    """`LoginSession.is_active` as SQL."""
    return (
        LoginSession.ended_at.is_(None)
        & LoginSession.awaiting_factor.is_(False)
        & (LoginSession.idle_expires_at > now)
        & (LoginSession.expires_at > now)
    )


def page_for_user(
    user_id: str, *, after: tuple[datetime, str] | None, limit: int, now: datetime | None = None
) -> list[LoginSession]:
    """A user's live sessions, oldest first, from just after the keyset (created_at, id)."""
    query = (
        select(LoginSession)
        .where(LoginSession.user_id == user_id, _live(now or utcnow()))
        .order_by(LoginSession.created_at, LoginSession.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(LoginSession.created_at, LoginSession.id) > after)
    return list(current_session().scalars(query))


def end_for_user(
    access: AppAccess, user_id: str, session_id: str, *, now: datetime | None = None
) -> bool:
    """End one live session if it belongs to `user_id`; False for anyone else's, for an
    unknown id and for one already over alike, so the answer is no existence oracle."""
    now = now or utcnow()
    conditions = (LoginSession.id == session_id, LoginSession.user_id == user_id, _live(now))
    return bool(_end_where(access, *conditions, now=now))
