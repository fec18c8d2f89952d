"""Organizations and memberships (owner, admin, member), and the rules that guard them.

Every function runs in the caller's unit of work and takes plain values. Who may see an
organization is decided in one place, `access`: anyone who is not a member gets the same
NotFound whether the organization exists or not, so ids cannot be probed (docs/security.md J75).
The last-owner rule is checked under a lock on the organization's owner rows, in the
transaction that makes the change, so two concurrent demotions cannot both pass it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import ID_MAX, Base, Position, current_session, new_id, utcnow
from authserver.errors import Conflict, Forbidden, Invalid, NotFound
from authserver.users import models as users
from authserver.users.models import User

ROLES = ("owner", "admin", "member")
MANAGERS = ("owner", "admin")
NAME_MAX = 200
NOT_FOUND = "No such organization."


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint("role IN ('owner', 'admin', 'member')", name="role"),)

    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class Access:
    """The caller's standing in one organization: their own role (None for an administrator
    who is not a member) and whether they act through the `admin` scope."""

    organization: Organization
    role: str | None
    admin: bool = False

    @property
    def acts_as(self) -> str | None:
        """An administrator may do whatever an owner may; the last-owner rule still holds."""
        return "owner" if self.admin else self.role


def validate_name(name: str) -> str:
    """Surrounding spaces go; control characters and lone surrogates are refused, anything
    else a person might call their organization (accents, emoji sequences) is kept."""
    name = name.strip()
    if (
        not name
        or len(name) > NAME_MAX
        or any(unicodedata.category(c) in ("Cc", "Cs") for c in name)
    ):
        raise Invalid(f"The organization name must be 1 to {NAME_MAX} printable characters.")
    return name


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"The role must be one of {', '.join(ROLES)}.")
    return role


def create(*, name: str, owner_id: str) -> Organization:
    """A new organization and its first owner, in the caller's transaction."""
    organization = Organization(name=validate_name(name))
    session = current_session()
    session.add(organization)
    session.flush()
    session.add(Membership(organization_id=organization.id, user_id=owner_id, role="owner"))
    session.flush()
    return organization


def membership_of(organization_id: str, user_id: str) -> Membership | None:
    return current_session().get(Membership, (organization_id, user_id))


def role_of(organization_id: str, user_id: str) -> str | None:
    """The user's role in the organization, or None if they are not a member. For ids that
    come from outside (a consent form, a token claim): an implausible one is simply not a
    membership and never reaches the database."""
    if not _plausible(organization_id, ID_MAX):
        return None
    membership = membership_of(organization_id, user_id)
    return membership.role if membership is not None else None


def access(organization_id: str, user_id: str | None, *, admin: bool = False) -> Access:
    """The caller's access to an organization, or NotFound: one answer for "no such
    organization" and "not yours", so a non-member learns nothing (docs/security.md J75)."""
    if not _plausible(organization_id, ID_MAX):
        raise NotFound(NOT_FOUND)
    organization = current_session().get(Organization, organization_id)
    membership = membership_of(organization_id, user_id) if user_id else None
    if organization is None or (membership is None and not admin):
        raise NotFound(NOT_FOUND)
    return Access(organization, membership.role if membership else None, admin)


def require(access: Access, roles: tuple[str, ...], action: str) -> None:
    """A member without the role gets 403: unlike an outsider, they know it exists."""
    if access.acts_as not in roles:
        raise Forbidden(f"Only an organization's {' or '.join(roles)} may {action}.")


def list_for_user(
    user_id: str, *, after: Position | None, limit: int
) -> list[tuple[Organization, str]]:
    """The user's organizations with their role, oldest first."""
    query = (
        select(Organization, Membership.role)
        .join(Membership, Membership.organization_id == Organization.id)
        .where(Membership.user_id == user_id)
    )
    if after is not None:
        query = query.where(tuple_(Organization.created_at, Organization.id) > after)
    query = query.order_by(Organization.created_at, Organization.id).limit(limit)
    return [(organization, role) for organization, role in current_session().execute(query)]


def list_members(
    organization_id: str, *, after: Position | None, limit: int
) -> list[tuple[Membership, User]]:
    """The members with their accounts, in the order they joined."""
    query = (
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.organization_id == organization_id)
    )
    if after is not None:
        query = query.where(tuple_(Membership.created_at, Membership.user_id) > after)
    query = query.order_by(Membership.created_at, Membership.user_id).limit(limit)
    return [(membership, user) for membership, user in current_session().execute(query)]


def rename(access: Access, name: str) -> Organization:
    require(access, MANAGERS, "rename it")
    access.organization.name = validate_name(name)
    current_session().flush()
    return access.organization


def delete(access: Access) -> None:
    """Delete an organization; the database drops its memberships with it."""
    require(access, ("owner",), "delete it")
    current_session().delete(access.organization)
    current_session().flush()


def add_member(access: Access, *, email: str, role: str) -> tuple[Membership, User]:
    """Add an existing, active account by email. Only an owner may add an owner."""
    validate_role(role)
    require(access, MANAGERS, "add members")
    if role == "owner" and access.acts_as != "owner":
        raise Forbidden("Only an owner may add an owner.")
    user = users.find_by_email(email) if _plausible(email, users.EMAIL_MAX) else None
    if user is None or not user.is_active:
        raise NotFound("There is no account with that email address.")
    organization_id = access.organization.id
    if membership_of(organization_id, user.id) is not None:
        raise Conflict("That account is already a member.")
    membership = Membership(organization_id=organization_id, user_id=user.id, role=role)
    session = current_session()
    session.add(membership)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict("That account is already a member.") from None
    return membership, user


def change_role(access: Access, user_id: str, role: str) -> tuple[Membership, User, str]:
    """Give a member another role; returns the membership, its account and the old role.

    An owner may change any role. An admin may not make anyone an owner nor change an
    owner's role. The last owner stays an owner.
    """
    validate_role(role)
    require(access, MANAGERS, "change roles")
    owners = _lock_owners(access.organization.id)
    membership, user = _locked_member(access.organization.id, user_id)
    previous = membership.role
    if access.acts_as != "owner" and "owner" in (role, previous):
        raise Forbidden("Only an owner may make someone an owner or change an owner's role.")
    if previous == "owner" and role != "owner" and owners == [user_id]:
        raise Conflict("The last owner cannot be demoted; make someone else an owner first.")
    membership.role = role
    current_session().flush()
    return membership, user, previous


def remove_member(access: Access, user_id: str, *, actor_id: str) -> Membership:
    """Remove a member; anyone may remove themselves (leave). Admins cannot remove owners,
    and the last owner cannot leave or be removed."""
    leaving = actor_id == user_id
    if not leaving:
        require(access, MANAGERS, "remove members")
    owners = _lock_owners(access.organization.id)
    membership, _ = _locked_member(access.organization.id, user_id)
    if not leaving and membership.role == "owner" and access.acts_as != "owner":
        raise Forbidden("Only an owner may remove an owner.")
    if membership.role == "owner" and owners == [user_id]:
        raise Conflict("The last owner cannot leave; make someone else an owner first.")
    current_session().delete(membership)
    current_session().flush()
    return membership


def solely_owned(user_id: str) -> list[str]:
    """The ids of the organizations `user_id` is the only owner of, their owner rows locked
    like `_lock_owners` does. Deleting that account would leave them without an owner, so
    account deletion should refuse (409) while this is not empty."""
    mine = select(Membership.organization_id).where(
        Membership.user_id == user_id, Membership.role == "owner"
    )
    query = (
        select(Membership.organization_id, Membership.user_id)
        .where(Membership.organization_id.in_(mine), Membership.role == "owner")
        .order_by(Membership.organization_id, Membership.user_id)
        .with_for_update()
    )
    owners: dict[str, list[str]] = {}
    for organization_id, owner_id in current_session().execute(query):
        owners.setdefault(organization_id, []).append(owner_id)
    return [org for org, ids in owners.items() if ids == [user_id]]


def _lock_owners(organization_id: str) -> list[str]:
    """The owners' user ids, their rows locked until the transaction ends (FOR UPDATE on
    PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes writers). A concurrent
    demotion waits here, then sees the owners as the first one left them."""
    query = (
        select(Membership.user_id)
        .where(Membership.organization_id == organization_id, Membership.role == "owner")
        .order_by(Membership.user_id)
        .with_for_update()
    )
    return list(current_session().scalars(query))


def _locked_member(organization_id: str, user_id: str) -> tuple[Membership, User]:
    """The member's row, locked and read afresh, so the role checks see the committed role."""
    if not _plausible(user_id, ID_MAX):
        raise NotFound("No such member.")
    query = (
        select(Membership, User)
        .join(User, User.id == Membership.user_id)
        .where(Membership.organization_id == organization_id, Membership.user_id == user_id)
        .with_for_update(of=Membership)
        .execution_options(populate_existing=True)
    )
    row = current_session().execute(query).one_or_none()
    if row is None:
        raise NotFound("No such member.")
    return row[0], row[1]


def _plausible(value: str, limit: int) -> bool:
    """Whether a row could hold `value`; anything else (too long, control characters, which
    PostgreSQL refuses with an error) is simply not found and never reaches the database."""
    return 0 < len(value) <= limit and value.isprintable()


def as_dict(organization: Organization) -> dict[str, object]:
    return {
        "id": organization.id,
        "name": organization.name,
        "created_at": organization.created_at.isoformat(),
        "updated_at": organization.updated_at.isoformat(),
    }


def member_as_dict(membership: Membership, user: User) -> dict[str, object]:
    return {
        "user_id": user.id,
        "email": user.email,
        "name": user.name,
        "role": membership.role,
        "created_at": membership.created_at.isoformat(),
    }
