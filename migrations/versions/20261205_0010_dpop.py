"""dpop: the DPoP key an authorization code and a token family are bound to

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 07:30:00

RFC 9449: `authorization_codes.dpop_jkt` is the `dpop_jkt` of the authorization request (the
token request's proof must be signed with that key); `token_families.dpop_jkt` binds a public
client's refresh tokens to the key of the proof they were issued against.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("authorization_codes") as batch:
        batch.add_column(sa.Column("dpop_jkt", sa.String(length=43), nullable=True))
    with op.batch_alter_table("token_families") as batch:
        batch.add_column(sa.Column("dpop_jkt", sa.String(length=43), nullable=True))


def downgrade() -> None:
    # On SQLite dropping a column rebuilds the table; with foreign keys on, dropping the old
    # token_families would cascade into every refresh and access token (see revision 0012).
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=OFF")
    try:
        with op.batch_alter_table("token_families") as batch:
            batch.drop_column("dpop_jkt")
        with op.batch_alter_table("authorization_codes") as batch:
            batch.drop_column("dpop_jkt")
    finally:
        if sqlite:
            with op.get_context().autocommit_block():
                op.execute("PRAGMA foreign_keys=ON")
