"""device authorizations (RFC 8628), pushed authorization requests (RFC 9126), and the
client settings for PAR and signed introspection (RFC 9701)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authserver.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DateTime = authserver.db.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "device_authorizations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("device_code_digest", sa.String(length=64), nullable=False),
        sa.Column("user_code_digest", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("scope", sa.String(length=1000), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=True),
        sa.Column("interval", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("session_id", sa.String(length=36), nullable=True),
        sa.Column("auth_time", DateTime(timezone=True), nullable=True),
        sa.Column("amr", sa.String(length=100), nullable=True),
        sa.Column("acr", sa.String(length=100), nullable=True),
        sa.Column("created_at", DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", DateTime(timezone=True), nullable=False),
        sa.Column("last_polled_at", DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", DateTime(timezone=True), nullable=True),
        sa.Column("used_at", DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_device_authorizations_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_device_authorizations_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["login_sessions.id"],
            name=op.f("fk_device_authorizations_session_id_login_sessions"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_authorizations")),
        sa.UniqueConstraint(
            "device_code_digest", name=op.f("uq_device_authorizations_device_code_digest")
        ),
        sa.UniqueConstraint(
            "user_code_digest", name=op.f("uq_device_authorizations_user_code_digest")
        ),
    )
    with op.batch_alter_table("device_authorizations") as batch:
        batch.create_index(batch.f("ix_device_authorizations_client_id"), ["client_id"])
        batch.create_index(batch.f("ix_device_authorizations_expires_at"), ["expires_at"])
    op.create_table(
        "pushed_authorization_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", DateTime(timezone=True), nullable=False),
        sa.Column("claimed_at", DateTime(timezone=True), nullable=True),
        sa.Column("used_at", DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
            name=op.f("fk_pushed_authorization_requests_client_id_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pushed_authorization_requests")),
        sa.UniqueConstraint("digest", name=op.f("uq_pushed_authorization_requests_digest")),
    )
    with op.batch_alter_table("pushed_authorization_requests") as batch:
        batch.create_index(batch.f("ix_pushed_authorization_requests_client_id"), ["client_id"])
        batch.create_index(batch.f("ix_pushed_authorization_requests_expires_at"), ["expires_at"])
    # Plain ADD COLUMN: a batch rebuild of `clients` on SQLite would cascade into every
    # table that references it (see revision 0005).
    op.add_column(
        "clients",
        sa.Column(
            "require_pushed_authorization_requests",
            sa.Boolean(),
            server_default=sa.false(),
            nullable=False,
        ),
    )
    op.add_column(
        "clients",
        sa.Column("introspection_signed_response_alg", sa.String(length=10), nullable=True),
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=OFF")
    try:
        with op.batch_alter_table("clients") as batch:
            batch.drop_column("introspection_signed_response_alg")
            batch.drop_column("require_pushed_authorization_requests")
    finally:
        if sqlite:
            with op.get_context().autocommit_block():
                op.execute("PRAGMA foreign_keys=ON")
    op.drop_table("pushed_authorization_requests")
    op.drop_table("device_authorizations")
