"""signing keys and the root secret in the database (AUTHSERVER_KEYS_STORE=database)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("alg", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("activates_at", sa.Integer(), nullable=False),
        sa.Column("retired_at", sa.Integer(), nullable=True),
        sa.Column("rotation_slot", sa.Integer(), nullable=True),
        sa.Column("private_pem", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("alg", "rotation_slot", name=op.f("uq_signing_keys_alg")),
    )
    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(length=30), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_secrets")),
    )


def downgrade() -> None:
    op.drop_table("server_secrets")
    op.drop_table("signing_keys")
