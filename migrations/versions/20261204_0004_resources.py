"""protected resources (RFC 8707): the registry, and the resources of codes and grants

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authserver.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("uri", sa.String(length=2000), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scope", sa.String(length=1000), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_resources_client_id_clients"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
        sa.UniqueConstraint("uri", name=op.f("uq_resources_uri")),
    )
    with op.batch_alter_table("resources") as batch:
        batch.create_index(batch.f("ix_resources_client_id"), ["client_id"], unique=False)
    op.add_column("authorization_codes", sa.Column("resources", sa.JSON(), nullable=True))
    op.add_column("token_families", sa.Column("resources", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("token_families") as batch:
        batch.drop_column("resources")
    with op.batch_alter_table("authorization_codes") as batch:
        batch.drop_column("resources")
    with op.batch_alter_table("resources") as batch:
        batch.drop_index(batch.f("ix_resources_client_id"))
    op.drop_table("resources")
