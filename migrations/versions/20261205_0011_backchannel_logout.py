"""OIDC Back-Channel Logout: the outbox of logout tokens owed to clients

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-05 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authserver.db

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DateTime = authserver.db.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "backchannel_logouts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", DateTime(timezone=True), nullable=False),
        sa.Column("lease", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_backchannel_logouts_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backchannel_logouts")),
        sa.UniqueConstraint(
            "client_id", "session_id", name=op.f("uq_backchannel_logouts_client_id")
        ),
    )
    with op.batch_alter_table("backchannel_logouts") as batch:
        batch.create_index(batch.f("ix_backchannel_logouts_client_id"), ["client_id"])
        batch.create_index(batch.f("ix_backchannel_logouts_next_attempt_at"), ["next_attempt_at"])


def downgrade() -> None:
    op.drop_table("backchannel_logouts")
