"""Token families (one per grant), refresh-token digests, and issued access-token ids.

A family is everything issued from one authorization: revoking it kills its refresh tokens
and, by reference, its access tokens. Only digests of refresh tokens are stored.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, delete
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, utcnow


class TokenFamily(Base):
    __tablename__ = "token_families"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[str | None] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="SET NULL"), index=True
    )
    code_id: Mapped[str | None] = mapped_column(
        ForeignKey("authorization_codes.id", ondelete="SET NULL"), unique=True
    )
    organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="SET NULL")
    )
    scope: Mapped[str] = mapped_column(String(1000))
    offline: Mapped[bool] = mapped_column(Boolean, default=False)
    auth_time: Mapped[datetime | None]
    amr: Mapped[str | None] = mapped_column(String(100))
    acr: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(40))


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = mapped_column(
        ForeignKey("token_families.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]


class AccessToken(Base):
    """An issued JWT access token's `jti`: the handle for revocation and introspection."""

    __tablename__ = "access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str | None] = mapped_column(
        ForeignKey("token_families.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None]


def purge(now: datetime) -> dict[str, int]:
    """Delete what can no longer be used. Rotated refresh tokens stay until their family
    expires, because presenting one again is how reuse is detected."""
    session = current_session()
    families = session.execute(delete(TokenFamily).where(TokenFamily.expires_at < now))
    refresh = session.execute(
        delete(RefreshToken).where(RefreshToken.expires_at < now, RefreshToken.rotated_at.is_(None))
    )
    access = session.execute(delete(AccessToken).where(AccessToken.expires_at < now))
    return {
        "token_families": int(families.rowcount or 0),
        "refresh_tokens": int(refresh.rowcount or 0),
        "access_tokens": int(access.rowcount or 0),
    }
