"""federation: upstream identity providers and linked identities

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 17:06:24

A person's (provider, upstream subject) links are unique: one upstream account opens one
account here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authserver.db

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "identity_providers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("issuer", sa.String(length=2000), nullable=True),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("client_secret", sa.Text(), nullable=False),
        sa.Column("authorization_endpoint", sa.String(length=2000), nullable=False),
        sa.Column("token_endpoint", sa.String(length=2000), nullable=False),
        sa.Column("userinfo_endpoint", sa.String(length=2000), nullable=True),
        sa.Column("jwks_uri", sa.String(length=2000), nullable=True),
        sa.Column("sends_iss", sa.Boolean(), nullable=False),
        sa.Column("token_auth_method", sa.String(length=40), nullable=False),
        sa.Column("scopes", sa.String(length=500), nullable=False),
        sa.Column("domains", sa.JSON(), nullable=False),
        sa.Column("trust_verified_emails", sa.Boolean(), nullable=False),
        sa.Column("jit", sa.Boolean(), nullable=False),
        sa.Column("organization_id", sa.String(length=36), nullable=True),
        sa.Column("default_role", sa.String(length=20), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_identity_providers_organization_id_organizations"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_providers")),
    )
    op.create_table(
        "linked_identities",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("provider_id", sa.String(length=36), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("created_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", authserver.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["identity_providers.id"],
            name=op.f("fk_linked_identities_provider_id_identity_providers"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_linked_identities_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_linked_identities")),
        sa.UniqueConstraint(
            "provider_id", "subject", name=op.f("uq_linked_identities_provider_id")
        ),
    )
    with op.batch_alter_table("linked_identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_linked_identities_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("linked_identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_linked_identities_user_id"))

    op.drop_table("linked_identities")
    op.drop_table("identity_providers")
