"""The audit trail: security events and admin changes, with actor, time, IP and target.

Never pass a secret, token or password in `details`: the table is read by admins and exported.
Administrators read it at `GET /api/v1/audit`, newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, insert, select, tuple_
from sqlalchemy.orm import Mapped, mapped_column
from starlette.requests import Request
from starlette.responses import Response

from authserver import rest
from authserver.db import Base, Position, current_session, new_id, table_of, utcnow
from authserver.errors import Invalid
from authserver.users import models as users


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(60), index=True)
    outcome: Mapped[str] = mapped_column(String(20), default="success")
    actor_type: Mapped[str] = mapped_column(String(20), default="system")
    #: Long enough for a client known by its metadata document URL.
    actor_id: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str] = mapped_column(String(64), default="")
    target_type: Mapped[str | None] = mapped_column(String(30))
    target_id: Mapped[str | None] = mapped_column(String(255))
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
    """Add an event to the current unit of work: it commits, or rolls back, with the change.

    One INSERT statement rather than an object for the session to flush: every issued
    token records an event, and the ORM's flush cost more than the token's signature."""
    values = {
        "id": new_id(),
        "at": utcnow(),
        "event": event,
        "outcome": outcome,
        "actor_type": actor_type,
        "actor_id": actor_id,
        "ip": ip,
        "target_type": target_type,
        "target_id": target_id,
        "details": details,
    }
    current_session().connection().execute(_INSERT, values)
    return AuditEvent(**values)


#: Built once: a statement made per call (`insert(...).values(...)`) costs as much again.
_INSERT = insert(table_of(AuditEvent))

FILTERS = ("event", "actor_id", "target_id")
FILTER_MAX = 64


def page(*, before: Position | None, limit: int, **filters: str | None) -> list[AuditEvent]:
    """Events newest first, from just before the keyset position (at, id); each filter in
    `FILTERS` given matches exactly."""
    query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    for name, value in filters.items():
        if value is not None:
            query = query.where(getattr(AuditEvent, name) == value)
    if before is not None:
        query = query.where(tuple_(AuditEvent.at, AuditEvent.id) < before)
    return list(current_session().scalars(query))


def as_dict(entry: AuditEvent) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "event": entry.event,
        "outcome": entry.outcome,
        "actor_type": entry.actor_type,
        "actor_id": entry.actor_id,
        "ip": entry.ip,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "details": entry.details,
    }


async def list_audit_events(request: Request) -> Response:
    """Administrators only; the administrator is read again on every request (J78)."""
    principal = await rest.authenticate(request, ("admin",))
    admin_id = principal.user_id
    filters = {name: request.query_params.get(name) for name in FILTERS}
    for name, value in filters.items():
        if value is not None and (len(value) > FILTER_MAX or not value.isprintable()):
            raise Invalid(f"`{name}` must be at most {FILTER_MAX} printable characters.")
    listing = rest.Listing(request, "audit")

    def read() -> list[AuditEvent]:
        if admin_id is not None:
            users.acting_admin(admin_id)
        return page(before=listing.after, limit=listing.limit, **filters)

    rows = await rest.run_sync(request, read)
    return listing.page(rows, lambda entry: (entry.at, entry.id), as_dict)


NULLABLE_TEXT = {"type": ["string", "null"]}
EVENT = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "id", "at", "event", "outcome", "actor_type", "actor_id", "ip", "target_type",
        "target_id", "details",
    ],
    "properties": {
        "id": {"type": "string"},
        "at": rest.TIMESTAMP,
        "event": {"type": "string"},
        "outcome": {"type": "string"},
        "actor_type": {"type": "string"},
        "actor_id": NULLABLE_TEXT,
        "ip": {"type": "string"},
        "target_type": NULLABLE_TEXT,
        "target_id": NULLABLE_TEXT,
        "details": {"type": "object"},
    },
}  # fmt: skip
FILTER: dict[str, Any] = {"type": "string", "maxLength": FILTER_MAX}

OPERATIONS = [
    rest.Operation(
        "GET", "/audit", list_audit_events,
        "List audit events, newest first (admin): sign-ins, tokens issued and revoked, refresh "
        "reuse, account and admin changes; filter by exact event, actor_id or target_id",
        ("admin",), response=rest.list_schema(EVENT), errors=(400, 401, 403),
        query={
            **dict.fromkeys(FILTERS, FILTER),
            **rest.PAGINATION,
        },
    ),
]  # fmt: skip
