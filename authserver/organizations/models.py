"""Organizations and memberships (owner, admin, member)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, utcnow
from authserver.errors import Invalid

ROLES = ("owner", "admin", "member")


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


def create(*, name: str, owner_id: str) -> Organization:
    """A new organization and its first owner, in the caller's transaction."""
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("The organization name must be 1 to 200 characters.")
    organization = Organization(name=name)
    session = current_session()
    session.add(organization)
    session.flush()
    session.add(Membership(organization_id=organization.id, user_id=owner_id, role="owner"))
    session.flush()
    return organization


def as_dict(organization: Organization) -> dict[str, object]:
    return {
        "id": organization.id,
        "name": organization.name,
        "created_at": organization.created_at.isoformat(),
    }
