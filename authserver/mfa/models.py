"""Storage of second factors and passkeys, behind narrow functions.

Every single-use rule is the database's: a TOTP time step is taken by a conditional UPDATE
that only moves forward, a recovery code is spent by an UPDATE of one unused row, and a
WebAuthn challenge is consumed the same way.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    LargeBinary,
    String,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.organizations.models import Membership


class TotpFactor(Base):
    """One authenticator app per person; `confirmed_at` is set once a code proved it works."""

    __tablename__ = "mfa_totp"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(200))
    last_step: Mapped[int] = mapped_column(BigInteger, default=-1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Passkey(Base):
    """A WebAuthn credential (a passkey or a security key)."""

    __tablename__ = "mfa_passkeys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[str] = mapped_column(String(1400), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    backup_eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]


class RecoveryCode(Base):
    __tablename__ = "mfa_recovery_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_at: Mapped[datetime | None]


class MfaPreference(Base):
    """A person's own "always ask for my second factor"."""

    __tablename__ = "mfa_preferences"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrganizationMfaPolicy(Base):
    """An organization requiring a second factor of every member."""

    __tablename__ = "mfa_organization_policies"

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    required: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebAuthnChallenge(Base):
    """A challenge handed to the browser: bound to it (`binding`, the digest of a cookie),
    to a person when one is known, short-lived and single use."""

    __tablename__ = "mfa_webauthn_challenges"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    purpose: Mapped[str] = mapped_column(String(20))
    binding: Mapped[str] = mapped_column(String(64))
    challenge: Mapped[bytes] = mapped_column(LargeBinary)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime | None]


# -- TOTP -----------------------------------------------------------------------------------


def totp_of(user_id: str) -> TotpFactor | None:
    return current_session().get(TotpFactor, user_id)


def start_totp(user_id: str, encrypted_secret: str) -> None:
    """Begin (or restart) enrolment; a confirmed factor is replaced only by removing it."""
    found = totp_of(user_id)
    if found is not None:
        if found.confirmed_at is not None:
            return
        current_session().delete(found)
        current_session().flush()
    current_session().add(TotpFactor(user_id=user_id, secret=encrypted_secret))
    current_session().flush()


def take_step(user_id: str, step: int, *, confirm: bool) -> bool:
    """Record that time step `step` was used, only if it is later than every step used
    before: a code is accepted at most once, and never one older than the last accepted."""
    now = utcnow()
    values: dict[str, object] = {"last_step": step, "last_used_at": now}
    conditions = [TotpFactor.user_id == user_id, TotpFactor.last_step < step]
    if confirm:
        values["confirmed_at"] = now
        conditions.append(TotpFactor.confirmed_at.is_(None))
    else:
        conditions.append(TotpFactor.confirmed_at.is_not(None))
    result = current_session().execute(update(TotpFactor).where(*conditions).values(**values))
    return rowcount(result) == 1


def remove_totp(user_id: str) -> bool:
    result = current_session().execute(delete(TotpFactor).where(TotpFactor.user_id == user_id))
    return bool(rowcount(result))


# -- passkeys -------------------------------------------------------------------------------


def passkeys_of(user_id: str) -> list[Passkey]:
    query = select(Passkey).where(Passkey.user_id == user_id).order_by(Passkey.created_at)
    return list(current_session().scalars(query))


def passkey_by_credential(credential_id: str) -> Passkey | None:
    return current_session().scalar(select(Passkey).where(Passkey.credential_id == credential_id))


def add_passkey(passkey: Passkey) -> Passkey:
    current_session().add(passkey)
    current_session().flush()
    return passkey


def record_passkey_use(passkey_id: str, sign_count: int, backed_up: bool) -> None:
    current_session().execute(
        update(Passkey)
        .where(Passkey.id == passkey_id)
        .values(sign_count=sign_count, backed_up=backed_up, last_used_at=utcnow())
    )


def remove_passkey(user_id: str, passkey_id: str) -> bool:
    result = current_session().execute(
        delete(Passkey).where(Passkey.id == passkey_id, Passkey.user_id == user_id)
    )
    return bool(rowcount(result))


# -- recovery codes -------------------------------------------------------------------------


def replace_recovery_codes(user_id: str, digests: list[str]) -> None:
    """The new set voids the old one in the same transaction."""
    current_session().execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    current_session().add_all(RecoveryCode(user_id=user_id, digest=d) for d in digests)
    current_session().flush()


def spend_recovery_code(user_id: str, digest: str) -> bool:
    result = current_session().execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.digest == digest,
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=utcnow())
    )
    return rowcount(result) == 1


def recovery_codes_left(user_id: str) -> int:
    query = select(func.count()).where(
        RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None)
    )
    return int(current_session().scalar(query.select_from(RecoveryCode)) or 0)


def remove_recovery_codes(user_id: str) -> int:
    result = current_session().execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    return int(rowcount(result) or 0)


# -- policy ---------------------------------------------------------------------------------


def person_requires(user_id: str) -> bool:
    found = current_session().get(MfaPreference, user_id)
    return bool(found and found.required)


def set_person_requires(user_id: str, required: bool) -> None:
    found = current_session().get(MfaPreference, user_id)
    if found is None:
        current_session().add(MfaPreference(user_id=user_id, required=required))
    else:
        found.required = required
        found.updated_at = utcnow()
    current_session().flush()


def organization_requires(organization_id: str) -> bool:
    found = current_session().get(OrganizationMfaPolicy, organization_id)
    return bool(found and found.required)


def set_organization_requires(organization_id: str, required: bool) -> None:
    found = current_session().get(OrganizationMfaPolicy, organization_id)
    if found is None:
        current_session().add(
            OrganizationMfaPolicy(organization_id=organization_id, required=required)
        )
    else:
        found.required = required
        found.updated_at = utcnow()
    current_session().flush()


def any_organization_requires(user_id: str) -> bool:
    query = (
        select(OrganizationMfaPolicy.organization_id)
        .join(Membership, Membership.organization_id == OrganizationMfaPolicy.organization_id)
        .where(Membership.user_id == user_id, OrganizationMfaPolicy.required.is_(True))
        .limit(1)
    )
    return current_session().scalar(query) is not None


# -- WebAuthn challenges --------------------------------------------------------------------


def save_challenge(
    *, purpose: str, binding: str, challenge: bytes, user_id: str | None, ttl: int
) -> str:
    row = WebAuthnChallenge(
        purpose=purpose,
        binding=binding,
        challenge=challenge,
        user_id=user_id,
        expires_at=utcnow() + timedelta(seconds=ttl),
    )
    current_session().add(row)
    current_session().flush()
    return row.id


def consume_challenge(challenge_id: str, *, purpose: str, binding: str) -> WebAuthnChallenge | None:
    """The challenge, once: a conditional UPDATE marks it used, so of two uses one wins."""
    now = utcnow()
    result = current_session().execute(
        update(WebAuthnChallenge)
        .where(
            WebAuthnChallenge.id == challenge_id,
            WebAuthnChallenge.purpose == purpose,
            WebAuthnChallenge.binding == binding,
            WebAuthnChallenge.used_at.is_(None),
            WebAuthnChallenge.expires_at > now,
        )
        .values(used_at=now)
    )
    if rowcount(result) != 1:
        return None
    return current_session().get(WebAuthnChallenge, challenge_id)


def purge_challenges(now: datetime) -> int:
    result = current_session().execute(
        delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at < now)
    )
    return int(rowcount(result) or 0)


def has_factor(user_id: str) -> bool:
    """A confirmed authenticator app or a passkey: something to ask for after a password."""
    totp = totp_of(user_id)
    if totp is not None and totp.confirmed_at is not None:
        return True
    query = select(Passkey.id).where(Passkey.user_id == user_id).limit(1)
    return current_session().scalar(query) is not None


def remove_all(user_id: str) -> None:
    remove_totp(user_id)
    current_session().execute(delete(Passkey).where(Passkey.user_id == user_id))
    remove_recovery_codes(user_id)
    set_person_requires(user_id, False)
