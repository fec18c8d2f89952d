"""initial access tokens for dynamic client registration in `token` mode

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authserver.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "initial_access_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", authserver.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_initial_access_tokens")),
        sa.UniqueConstraint("digest", name=op.f("uq_initial_access_tokens_digest")),
    )


def downgrade() -> None:
    op.drop_table("initial_access_tokens")
