"""Authorization codes: stored as digests, single use, enforced by the database.

A code is consumed by one conditional UPDATE in the same transaction as the tokens it buys
(docs/security.md K81, L89): of any number of concurrent redemptions exactly one touches the row,
and if storing the tokens fails the consumption rolls back with them. Consumed codes are
kept (not deleted) so that a replay can be recognised and answered by revocation.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from authlib.oidc.core import AuthorizationCodeMixin
from sqlalchemy import JSON, ForeignKey, String, delete, select, update
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.security import Digester


class AuthorizationCode(Base, AuthorizationCodeMixin):
    __tablename__ = "authorization_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="SET NULL"), index=True
    )
    organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="SET NULL")
    )
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    scope: Mapped[str] = mapped_column(String(1000))
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(10))
    auth_time: Mapped[datetime]
    amr: Mapped[str] = mapped_column(String(100), default="pwd")
    acr: Mapped[str | None] = mapped_column(String(100))
    #: RFC 8707 resource indicators of the authorization request (None: none was sent).
    resources: Mapped[list[str] | None] = mapped_column(JSON)
    #: RFC 9449 §10: the DPoP key the token request's proof must be signed with.
    dpop_jkt: Mapped[str | None] = mapped_column(String(43))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]

    def get_redirect_uri(self) -> str:
        """The `redirect_uri` the authorization request carried ("" when it was omitted):
        RFC 6749 §4.1.3 requires the token request to repeat exactly that value."""
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> str | None:
        return self.acr

    def get_amr(self) -> list[str]:
        return self.amr.split()


PURPOSE = "authorization_code"
REPLAY_MEMORY = timedelta(hours=1)


def create(
    digester: Digester,
    code: str,
    *,
    client_id: str,
    user_id: str,
    session_id: str | None,
    redirect_uri: str,
    scope: str,
    nonce: str | None,
    code_challenge: str,
    code_challenge_method: str,
    auth_time: datetime,
    amr: str,
    acr: str | None,
    now: datetime,
    ttl: int,
    organization_id: str | None = None,
    resources: list[str] | None = None,
    dpop_jkt: str | None = None,
) -> AuthorizationCode:
    """Store a new code; only its digest is kept."""
    row = AuthorizationCode(
        digest=digester.digest(PURPOSE, code),
        client_id=client_id,
        user_id=user_id,
        session_id=session_id,
        redirect_uri=redirect_uri,
        scope=scope,
        nonce=nonce,
        organization_id=organization_id,
        code_challenge=code_challenge,
        code_challenge_method=code_challenge_method,
        auth_time=auth_time,
        amr=amr,
        acr=acr,
        resources=resources or None,
        dpop_jkt=dpop_jkt,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )
    current_session().add(row)
    current_session().flush()
    return row


def find(digester: Digester, code: str) -> AuthorizationCode | None:
    """The code behind a presented value, used or not (a used one signals a replay)."""
    if not code or len(code) > 200:
        return None
    return current_session().scalar(
        select(AuthorizationCode).where(AuthorizationCode.digest == digester.digest(PURPOSE, code))
    )


def redeem(code_id: str, now: datetime) -> bool:
    """Consume a code: True for the one caller whose conditional UPDATE touched the row.

    `UPDATE ... WHERE used_at IS NULL AND expires_at > now` is decided by the database, so
    two workers racing with one code cannot both win (on PostgreSQL the loser waits for the
    winner's row lock, then re-checks the condition and finds the code used).
    """
    result = current_session().execute(
        update(AuthorizationCode)
        .where(
            AuthorizationCode.id == code_id,
            AuthorizationCode.used_at.is_(None),
            AuthorizationCode.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


def purge(now: datetime) -> int:
    """Forget codes an hour after they expire: long enough to answer a replay by revoking."""
    cutoff = now - REPLAY_MEMORY
    result = current_session().execute(
        delete(AuthorizationCode).where(AuthorizationCode.expires_at < cutoff)
    )
    return int(rowcount(result) or 0)
