"""User accounts and the single-use links emailed to them."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Boolean, ForeignKey, String, delete, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, rowcount, utcnow
from authserver.errors import Conflict, Forbidden, Invalid, NotFound
from authserver.security import Digester, Passwords, new_token


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
    """Emails compare case-insensitively and by Unicode compatibility form: the whole address
    is NFKC-normalised and lowercased once, on the way in (and before any comparison, such as
    an upstream provider's assertion, docs/security.md N104)."""
    return unicodedata.normalize("NFKC", email.strip()).lower()


def find_by_email(email: str) -> User | None:
    return current_session().scalar(select(User).where(User.email == normalize_email(email)))


def get(user_id: str) -> User | None:
    return current_session().get(User, user_id)


EMAIL_MAX = 320
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
#: zxcvbn scores 0-4; 3 means more than 10^8 guesses ("safely unguessable" online, and a
#: costly target for offline guessing against argon2id).
PASSWORD_MIN_SCORE = 3
#: zxcvbn's own limit; a longer password is judged by its beginning.
ESTIMATED_LENGTH = 72
PRODUCT_NAME = "authserver"
TOO_GUESSABLE = "This password is too common or too easy to guess"
PASSPHRASE_ADVICE = "use a longer passphrase of several unrelated words."


def existing(user_id: str) -> User:
    """The user, or the API's 404 when there is none (deleted, or an id from elsewhere)."""
    user = get(user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


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


def validate_password(password: str, *, email: str = "", name: str = "") -> str:
    """The one password policy (sign-up, reset, change, the API and the CLI).

    NIST SP 800-63B §3.1.1.2 and ASVS 6.2: a length floor and ceiling, no composition rules,
    no truncation, and no password that is common or guessable, judged by the zxcvbn
    estimator (common-password lists, keyboard walks, repeats, sequences, dates) with the
    person's email and name and the product's name as words an attacker would try first.
    """
    if len(password) < PASSWORD_MIN:
        raise Invalid(f"The password must be at least {PASSWORD_MIN} characters long.")
    if len(password) > PASSWORD_MAX:
        raise Invalid(f"The password must be at most {PASSWORD_MAX} characters long.")
    from zxcvbn import zxcvbn  # its word lists take 13 MiB: loaded when a password is set

    context = [PRODUCT_NAME, email, *email.split("@"), *name.split()]
    estimate = zxcvbn(password[:ESTIMATED_LENGTH], user_inputs=[w for w in context if w])
    if estimate["score"] < PASSWORD_MIN_SCORE:
        warning = str(estimate["feedback"].get("warning") or "").rstrip(".")
        reason = f" ({warning[0].lower()}{warning[1:]})" if warning else ""
        raise Invalid(f"{TOO_GUESSABLE}{reason}: {PASSPHRASE_ADVICE}")
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
    return int(rowcount(result) or 0)


@dataclass(frozen=True)
class Candidate:
    """What a sign-in needs from storage: the account's id and hash, or Nones."""

    user_id: str | None = None
    password_hash: str | None = None


def sign_in_candidate(email: str) -> Candidate:
    """The active account behind `email` and its password hash, for a check that runs outside
    the transaction: argon2 takes tens of milliseconds and must not hold a database lock."""
    if len(email) > EMAIL_MAX or "\x00" in email:
        return Candidate()
    user = find_by_email(email)
    if user is None or not user.is_active or user.password_hash is None:
        return Candidate()
    return Candidate(user.id, user.password_hash)


def check_password(passwords: Passwords, candidate: Candidate, password: str) -> str | None:
    """The account id when the password is right, else None. No database work.

    Exactly one argon2 verification runs whatever the account's state (a dummy hash stands in
    for unknown, inactive and password-less accounts), so neither the answer nor its timing
    tells them apart (docs/security.md I72); passwords are compared whole (I70).
    """
    stored = candidate.password_hash if len(password) <= PASSWORD_MAX else None
    if not passwords.verify(stored, password) or stored is None:
        return None
    return candidate.user_id


def upgrade_hash(user_id: str, seen_hash: str, new_hash: str) -> None:
    """Store a hash made with today's parameters (I69), unless the password changed meanwhile."""
    current_session().execute(
        update(User)
        .where(User.id == user_id, User.password_hash == seen_hash)
        .values(password_hash=new_hash)
    )


VERIFY_EMAIL = "verify_email"
RESET_PASSWORD = "reset_password"
LINK_TOKEN_MAX = 128


def _link_digest(digester: Digester, purpose: str, raw_token: str) -> str:
    """Keyed per purpose, so a verification link can never be replayed as a reset link."""
    return digester.digest(f"email-link/{purpose}", raw_token)


def _readable_token(raw_token: str) -> bool:
    return 0 < len(raw_token) <= LINK_TOKEN_MAX and raw_token.isascii()


def issue_link(
    digester: Digester, *, user_id: str, purpose: str, lifetime: int, now: datetime | None = None
) -> str:
    """Store a single-use link valid for `lifetime` seconds; return the raw token for the email.

    Only the digest is stored, so the table is no list of working links.
    """
    now = now or utcnow()
    raw_token = new_token()
    current_session().add(
        EmailToken(
            digest=_link_digest(digester, purpose, raw_token),
            user_id=user_id,
            purpose=purpose,
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime),
        )
    )
    return raw_token


def link_owner(
    digester: Digester, raw_token: str, purpose: str, *, now: datetime | None = None
) -> User | None:
    """The active user a live link belongs to, without using it up: the GET that shows the
    form must not spend the link, or a mail scanner prefetching it would."""
    if not _readable_token(raw_token):
        return None
    now = now or utcnow()
    user_id = current_session().scalar(
        select(EmailToken.user_id).where(
            EmailToken.digest == _link_digest(digester, purpose, raw_token),
            EmailToken.purpose == purpose,
            EmailToken.used_at.is_(None),
            EmailToken.expires_at > now,
        )
    )
    user = get(user_id) if user_id else None
    return user if user is not None and user.is_active else None


def redeem_link(
    digester: Digester, raw_token: str, purpose: str, *, now: datetime | None = None
) -> User | None:
    """Use up a link and return its active user, or None when it is unknown, used or expired.

    One conditional UPDATE that must touch one row: of two racing requests exactly one wins,
    with no read-then-write window (the pattern of docs/security.md K81).
    """
    if not _readable_token(raw_token):
        return None
    now = now or utcnow()
    user_id = current_session().scalar(
        update(EmailToken)
        .where(
            EmailToken.digest == _link_digest(digester, purpose, raw_token),
            EmailToken.purpose == purpose,
            EmailToken.used_at.is_(None),
            EmailToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(EmailToken.user_id)
    )
    user = get(user_id) if user_id else None
    return user if user is not None and user.is_active else None


def revoke_links(user_id: str, purpose: str, *, now: datetime | None = None) -> int:
    """Spend every outstanding link of a kind, e.g. older reset links once the password changed."""
    result = current_session().execute(
        update(EmailToken)
        .where(
            EmailToken.user_id == user_id,
            EmailToken.purpose == purpose,
            EmailToken.used_at.is_(None),
        )
        .values(used_at=now or utcnow())
    )
    return int(rowcount(result) or 0)


def set_password(user: User, password_hash: str) -> None:
    """Store a new argon2id hash (hashed by the caller, outside the transaction)."""
    user.password_hash = password_hash


def mark_email_verified(user: User) -> None:
    user.email_verified = True


NAME_MAX = 200


def validate_name(name: str) -> str:
    """A display name: trimmed, 1 to NAME_MAX printable characters."""
    name = name.strip()
    if not name or len(name) > NAME_MAX or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise Invalid(f"The name must be 1 to {NAME_MAX} printable characters.")
    return name


def page(
    *,
    after: tuple[datetime, str] | None,
    limit: int,
    email: str | None = None,
    active: bool | None = None,
) -> list[User]:
    """Users oldest first, from just after the keyset position (created_at, id)."""
    query = select(User).order_by(User.created_at, User.id).limit(limit)
    if email is not None:
        query = query.where(User.email == normalize_email(email))
    if active is not None:
        query = query.where(User.is_active.is_(active))
    if after is not None:
        query = query.where(tuple_(User.created_at, User.id) > after)
    return list(current_session().scalars(query))


def acting_admin(user_id: str | None) -> User:
    """The administrator an `admin` token speaks for, read again on every request: the
    scope was checked when the token was issued, and demoting or disabling an admin must
    take effect on the next request, not when the token expires (docs/security.md J78)."""
    user = get(user_id) if user_id else None
    if user is None or not user.is_active or not user.is_admin:
        raise Forbidden("This operation is for administrators.")
    return user


def keeps_an_admin(user: User) -> None:
    """Refuse to demote, disable or delete the last active administrator: nobody could
    manage the accounts afterwards except from the command line."""
    if not (user.is_admin and user.is_active):
        return
    others = current_session().scalar(
        select(func.count())
        .select_from(User)
        .where(User.is_admin.is_(True), User.is_active.is_(True), User.id != user.id)
    )
    if not others:
        raise Conflict("This is the last active administrator; appoint another one first.")


def delete_user(user: User) -> None:
    """Delete the account; its sessions, token families, consents and memberships go with it
    (ON DELETE CASCADE). Audit events keep the id, never the person's details."""
    current_session().delete(user)
    current_session().flush()
