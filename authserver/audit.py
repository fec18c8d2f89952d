"""The audit trail: security events and admin changes, with actor, time, IP and target.

Never pass a secret, token or password in `details`: the table is read by admins and exported.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from authserver.db import Base, current_session, new_id, utcnow


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(60), index=True)
    outcome: Mapped[str] = mapped_column(String(20), default="success")
    actor_type: Mapped[str] = mapped_column(String(20), default="system")
    actor_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64), default="")
    target_type: Mapped[str | None] = mapped_column(String(30))
    target_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def record(
    event: str,
    *,
    outcome: str = "success",
    actor_type: str = "system",
    actor_id: str | None = None,
    ip: str = "",
    target_type: str | None = None,
    target_id: str | None = None,
    **details: Any,
) -> AuditEvent:
    """Add an event to the current unit of work: it commits, or rolls back, with the change."""
    entry = AuditEvent(
        event=event,
        outcome=outcome,
        actor_type=actor_type,
        actor_id=actor_id,
        ip=ip,
        target_type=target_type,
        target_id=target_id,
        details=details,
    )
    current_session().add(entry)
    return entry
