"""second factors and passkeys: authenticator apps, passkeys, recovery codes, policies

On this branch it follows 0004 (the head it was written on); the integrator re-chains.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 16:57:21.511114
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import authserver.db

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mfa_organization_policies",
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("required", sa.Boolean(), nullable=False),
        sa.Column("updated_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_mfa_organization_policies_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_mfa_organization_policies")),
    )
    op.create_table(
        "mfa_passkeys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("credential_id", sa.String(length=1400), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("backup_eligible", sa.Boolean(), nullable=False),
        sa.Column("backed_up", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", authserver.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_mfa_passkeys_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_passkeys")),
        sa.UniqueConstraint("credential_id", name=op.f("uq_mfa_passkeys_credential_id")),
    )
    with op.batch_alter_table("mfa_passkeys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mfa_passkeys_user_id"), ["user_id"], unique=False)

    op.create_table(
        "mfa_preferences",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("required", sa.Boolean(), nullable=False),
        sa.Column("updated_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_mfa_preferences_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_mfa_preferences")),
    )
    op.create_table(
        "mfa_recovery_codes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", authserver.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_mfa_recovery_codes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_recovery_codes")),
        sa.UniqueConstraint("digest", name=op.f("uq_mfa_recovery_codes_digest")),
    )
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mfa_recovery_codes_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "mfa_totp",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("secret", sa.String(length=200), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.Column("created_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", authserver.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", authserver.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_mfa_totp_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_mfa_totp")),
    )
    op.create_table(
        "mfa_webauthn_challenges",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("purpose", sa.String(length=20), nullable=False),
        sa.Column("binding", sa.String(length=64), nullable=False),
        sa.Column("challenge", sa.LargeBinary(), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("expires_at", authserver.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", authserver.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_mfa_webauthn_challenges_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mfa_webauthn_challenges")),
    )
    with op.batch_alter_table("mfa_webauthn_challenges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mfa_webauthn_challenges_expires_at"), ["expires_at"], unique=False
        )

    with op.batch_alter_table("login_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acr", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("awaiting_factor", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("password_at", authserver.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("otp_at", authserver.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("passkey_at", authserver.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("recovery_code_at", authserver.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("login_sessions", schema=None) as batch_op:
        batch_op.drop_column("recovery_code_at")
        batch_op.drop_column("passkey_at")
        batch_op.drop_column("otp_at")
        batch_op.drop_column("password_at")
        batch_op.drop_column("awaiting_factor")
        batch_op.drop_column("acr")

    with op.batch_alter_table("mfa_webauthn_challenges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mfa_webauthn_challenges_expires_at"))

    op.drop_table("mfa_webauthn_challenges")
    op.drop_table("mfa_totp")
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mfa_recovery_codes_user_id"))

    op.drop_table("mfa_recovery_codes")
    op.drop_table("mfa_preferences")
    with op.batch_alter_table("mfa_passkeys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mfa_passkeys_user_id"))

    op.drop_table("mfa_passkeys")
    op.drop_table("mfa_organization_policies")
