"""Consent: what a user allowed a client, remembered as its own record.

One row per user and client holds the union of every scope the user allowed it. A later
request for the same or fewer scopes needs no new consent; anything new is asked for.
The /consent page itself is part of the authorization flow (see `authorize.py`); this
module only knows the record and the words the page uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ForeignKey, String, UniqueConstraint, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.errors import NotFound
from authserver.oauth.clients import Client
from authserver.oauth.tokens import TokenFamily
from authserver.resource_server import API_SCOPES

if TYPE_CHECKING:
    from authserver.actors import Caller


class Consent(Base):
    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("user_id", "client_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def find(user_id: str, client_id: str) -> Consent | None:
    return current_session().scalar(
        select(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id)
    )


def covers(user_id: str, client_id: str, scope: str) -> bool:
    """Whether the user already allowed this client every scope requested now."""
    found = find(user_id, client_id)
    return found is not None and set(scope.split()) <= set(found.scope.split())


def remember(user_id: str, client_id: str, scope: str, now: datetime) -> Consent:
    """Add `scope` to what the user allowed the client.

    Two tabs allowing at once race for the unique (user, client) row; the loser's insert
    runs in a savepoint, so it can fall back to updating the winner's row.
    """
    found = find(user_id, client_id)
    if found is None:
        try:
            with current_session().begin_nested():
                found = Consent(
                    user_id=user_id,
                    client_id=client_id,
                    scope=scope,
                    created_at=now,
                    updated_at=now,
                )
                current_session().add(found)
            return found
        except IntegrityError:
            found = find(user_id, client_id)
            if found is None:
                raise
    merged = list(dict.fromkeys([*found.scope.split(), *scope.split()]))
    found.scope = " ".join(merged)
    found.updated_at = now
    return found


SCOPE_WORDS = {
    "openid": "Confirm your identity",
    "profile": "See your name",
    "email": "See your email address",
    "offline_access": "Stay signed in to {app} when you are away",
    "organization": "See the organization you choose and your role in it",
    **API_SCOPES,
}


def describe(scope: str, app: str) -> list[str]:
    """Each requested scope in words, for the consent page (SPEC §6)."""
    return [
        SCOPE_WORDS[name].format(app=app) if name in SCOPE_WORDS else f"Use the “{name}” permission"
        for name in scope.split()
    ]


def page_for_user(
    user_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> list[tuple[Consent, str]]:
    """The user's consents with the name of the client each was given to, oldest first."""
    query = (
        select(Consent, Client.name)
        .join(Client, Client.id == Consent.client_id)
        .where(Consent.user_id == user_id)
        .order_by(Consent.created_at, Consent.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(tuple_(Consent.created_at, Consent.id) > after)
    return [(row, name) for row, name in current_session().execute(query)]


def find_for_user(user_id: str, consent_id: str) -> Consent | None:
    """The consent if it is `user_id`'s: another user's is as absent as an unknown id."""
    found = current_session().get(Consent, consent_id)
    return found if found is not None and found.user_id == user_id else None


def revoke(consent: Consent, now: datetime) -> int:
    """Forget a consent and revoke every token family the user's grant gave the client:
    its refresh tokens fail and its access tokens turn inactive by reference (ASVS 10.4.9,
    10.7.3). Returns how many families were revoked."""
    current_session().delete(consent)
    result = current_session().execute(
        update(TokenFamily)
        .where(
            TokenFamily.user_id == consent.user_id,
            TokenFamily.client_id == consent.client_id,
            TokenFamily.revoked_at.is_(None),
        )
        .values(revoked_at=now, revoked_reason="consent_revoked")
        .execution_options(synchronize_session=False)
    )
    return int(rowcount(result) or 0)


#: What the consent page shows of a client's registered metadata, as link labels.
CONSENT_LINKS = {"policy_uri": "Privacy policy", "tos_uri": "Terms of service"}


def consent_links(client: Client) -> dict[str, str]:
    """The logo, privacy policy and terms of service a client registered, for the consent
    page: https only, checked again here because each is about to become a link."""
    info = client.info or {}
    return {
        name: info[name]
        for name in ("logo_uri", *CONSENT_LINKS)
        if isinstance(info.get(name), str) and info[name].startswith("https://")
    }


def revoke_own(actor: Caller, consent_id: str) -> None:
    """Revoke one of the caller's consents, or NotFound (the same for anyone else's)."""
    found = find_for_user(actor.user_id, consent_id)
    if found is None:
        raise NotFound("No such consent.")
    revoked = revoke(found, utcnow())
    actor.record(
        "consent.revoked",
        "consent",
        consent_id,
        oauth_client_id=found.client_id,
        token_families_revoked=revoked,
    )
