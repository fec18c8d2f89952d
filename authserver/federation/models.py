"""Upstream identity providers and the identities people link from them.

A person may sign in through any number of upstream accounts, each one row of
`linked_identities`, unique per (provider, upstream subject): the database, not the code,
makes sure one upstream account opens one person's account here (docs/security.md N104).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.errors import Conflict, NotFound
from authserver.users.models import User

KINDS = ("oidc", "github")
SUBJECT_MAX = 255


class IdentityProvider(Base):
    """An upstream OpenID provider or GitHub; its client secret is stored encrypted
    (`providers.SecretBox`), since it must be sent upstream and so cannot be hashed."""

    __tablename__ = "identity_providers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    issuer: Mapped[str | None] = mapped_column(String(2000))
    client_id: Mapped[str] = mapped_column(String(255))
    client_secret: Mapped[str] = mapped_column(Text)
    authorization_endpoint: Mapped[str] = mapped_column(String(2000))
    token_endpoint: Mapped[str] = mapped_column(String(2000))
    userinfo_endpoint: Mapped[str | None] = mapped_column(String(2000))
    jwks_uri: Mapped[str | None] = mapped_column(String(2000))
    #: RFC 9207: the provider promised to send `iss` with every authorization response.
    sends_iss: Mapped[bool] = mapped_column(Boolean, default=False)
    token_auth_method: Mapped[str] = mapped_column(String(40), default="client_secret_basic")
    scopes: Mapped[str] = mapped_column(String(500), default="openid email profile")
    #: Email domains this provider is authoritative for (lowercase): a verified address in
    #: one of them may be linked to the existing account with that address.
    domains: Mapped[list[str]] = mapped_column(JSON, default=list)
    trust_verified_emails: Mapped[bool] = mapped_column(Boolean, default=False)
    jit: Mapped[bool] = mapped_column(Boolean, default=False)
    organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="SET NULL")
    )
    default_role: Mapped[str] = mapped_column(String(20), default="member")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LinkedIdentity(Base):
    __tablename__ = "linked_identities"
    __table_args__ = (UniqueConstraint("provider_id", "subject"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider_id: Mapped[str] = mapped_column(
        ForeignKey("identity_providers.id", ondelete="CASCADE")
    )
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX))
    #: The address the upstream asserted when last seen: shown to the person, never matched.
    email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]


def find_link(provider_id: str, subject: str) -> LinkedIdentity | None:
    return current_session().scalar(
        select(LinkedIdentity).where(
            LinkedIdentity.provider_id == provider_id, LinkedIdentity.subject == subject
        )
    )


def link(user_id: str, provider_id: str, subject: str, email: str) -> LinkedIdentity:
    """Link an upstream account; one already linked (to anyone) is a Conflict, guaranteed
    by the unique constraint even when two callbacks race."""
    identity = LinkedIdentity(
        user_id=user_id,
        provider_id=provider_id,
        subject=subject,
        email=email[:320],
        last_used_at=utcnow(),
    )
    session = current_session()
    try:
        with session.begin_nested():
            session.add(identity)
            session.flush()
    except IntegrityError:
        raise Conflict("That account is already linked to a person here.") from None
    return identity


def touch(identity: LinkedIdentity, email: str) -> None:
    identity.last_used_at = utcnow()
    if email:
        identity.email = email[:320]


def links_of(user_id: str) -> list[tuple[LinkedIdentity, IdentityProvider]]:
    rows = current_session().execute(
        select(LinkedIdentity, IdentityProvider)
        .join(IdentityProvider, IdentityProvider.id == LinkedIdentity.provider_id)
        .where(LinkedIdentity.user_id == user_id)
        .order_by(LinkedIdentity.created_at, LinkedIdentity.id)
    )
    return [(identity, provider) for identity, provider in rows]


def unlink(user_id: str, identity_id: str) -> LinkedIdentity:
    """Remove one of a person's links, unless it is their last way in (no password and no
    other link). The user row is locked first, so two removals racing for the last two links
    cannot both succeed."""
    session = current_session()
    user = session.scalar(select(User).where(User.id == user_id).with_for_update())
    identity = session.get(LinkedIdentity, identity_id)
    if user is None or identity is None or identity.user_id != user_id:
        raise NotFound("No such linked identity.")
    others = session.scalar(
        select(func.count())
        .select_from(LinkedIdentity)
        .where(LinkedIdentity.user_id == user_id, LinkedIdentity.id != identity_id)
    )
    if user.password_hash is None and not others:
        raise Conflict(
            "This is your only way to sign in: set a password or link another account first."
        )
    result = session.execute(delete(LinkedIdentity).where(LinkedIdentity.id == identity_id))
    if not rowcount(result):
        raise NotFound("No such linked identity.")
    return identity


def as_dict(identity: LinkedIdentity, provider: IdentityProvider) -> dict[str, Any]:
    return {
        "id": identity.id,
        "provider_id": provider.id,
        "provider_name": provider.name,
        "provider_kind": provider.kind,
        "subject": identity.subject,
        "email": identity.email,
        "created_at": identity.created_at.isoformat(),
        "last_used_at": identity.last_used_at.isoformat() if identity.last_used_at else None,
    }
