"""User accounts and the single-use links emailed to them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, utcnow
from authserver.errors import Conflict, Invalid
from authserver.security import Passwords


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EmailToken(Base):
    """A single-use link (verify email, reset password); only its digest is stored."""

    __tablename__ = "email_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


def normalize_email(email: str) -> str:
    """Emails compare case-insensitively: the whole address is lowercased once, on the way in."""
    return email.strip().lower()


def find_by_email(email: str) -> User | None:
    return current_session().scalar(select(User).where(User.email == normalize_email(email)))


def get(user_id: str) -> User | None:
    return current_session().get(User, user_id)


EMAIL_MAX = 320
PASSWORD_MIN = 8
PASSWORD_MAX = 1024


def validate_email(email: str) -> str:
    """A deliberately plain check: one @, a dotted domain, no spaces or controls."""
    normalized = normalize_email(email)
    local, at, domain = normalized.rpartition("@")
    if (
        not at
        or not local
        or "." not in domain.strip(".")
        or len(normalized) > EMAIL_MAX
        or any(ch.isspace() or ord(ch) < 32 for ch in normalized)
    ):
        raise Invalid("That is not a valid email address.")
    return normalized


def validate_password(password: str) -> str:
    """ASVS 6.2: length only, no composition rules, no truncation; long passphrases welcome."""
    if len(password) < PASSWORD_MIN:
        raise Invalid(f"The password must be at least {PASSWORD_MIN} characters long.")
    if len(password) > PASSWORD_MAX:
        raise Invalid(f"The password must be at most {PASSWORD_MAX} characters long.")
    return password


def create(
    *, email: str, password_hash: str | None, name: str = "", is_admin: bool = False
) -> User:
    """Add a user; a taken email is a Conflict (checked here, guaranteed by the unique index)."""
    email = validate_email(email)
    if find_by_email(email) is not None:
        raise Conflict("A user with that email already exists.")
    user = User(email=email, name=name.strip(), password_hash=password_hash, is_admin=is_admin)
    session = current_session()
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict("A user with that email already exists.") from None
    return user


def as_dict(user: User) -> dict[str, object]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "email_verified": user.email_verified,
        "is_admin": user.is_admin,
        "is_active": user.is_active,
        "created_at": user.created_at.isoformat(),
    }


def purge_email_tokens(now: datetime) -> int:
    result = current_session().execute(delete(EmailToken).where(EmailToken.expires_at < now))
    return int(result.rowcount or 0)


def authenticate(passwords: Passwords, email: str, password: str) -> User | None:
    """The active user with this email and password, or None.

    Every call runs exactly one argon2 verification, against a dummy hash when the account is
    unknown, inactive or has no password, so neither the answer nor its timing tells which
    (SECURITY.md I72). Passwords are compared whole, never truncated or case-folded (I70), and
    a hash made with weaker parameters than today's is replaced on the way in (I69).
    """
    lookupable = len(email) <= EMAIL_MAX and "\x00" not in email
    user = find_by_email(email) if lookupable else None
    if user is not None and not user.is_active:
        user = None
    stored = user.password_hash if user is not None and len(password) <= PASSWORD_MAX else None
    if not passwords.verify(stored, password) or user is None or stored is None:
        return None
    if passwords.needs_rehash(stored):
        user.password_hash = passwords.hash(password)
    return user
