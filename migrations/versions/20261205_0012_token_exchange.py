"""token exchange: a client's exchange policy and an exchanged token's subject

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-05 07:30:00

`clients.token_exchange_audiences` lists the resources a client may exchange a person's
access token for (RFC 8693); `access_tokens.subject_jti` names the token an access token was
exchanged for, which must stay live for it to count.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN: a batch rebuild of `clients` on SQLite would cascade into every
    # table that references it (see revision 0005).
    op.add_column("clients", sa.Column("token_exchange_audiences", sa.JSON(), nullable=True))
    op.add_column("access_tokens", sa.Column("subject_jti", sa.String(length=64), nullable=True))


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=OFF")
    try:
        with op.batch_alter_table("access_tokens") as batch:
            batch.drop_column("subject_jti")
        with op.batch_alter_table("clients") as batch:
            batch.drop_column("token_exchange_audiences")
    finally:
        if sqlite:
            with op.get_context().autocommit_block():
                op.execute("PRAGMA foreign_keys=ON")
