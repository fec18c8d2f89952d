"""client ids as long as a client ID metadata document URL

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 12:00:00

`clients.id` and every column holding a client id grow from 64 to 255 characters. On
SQLite, batch mode rebuilds each table; foreign keys are switched off around it (outside
the transaction, where SQLite honours the pragma), because dropping the old `clients`
table with them on would cascade into every code, consent and token family.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("clients", "id", False),
    ("consents", "client_id", False),
    ("authorization_codes", "client_id", False),
    ("token_families", "client_id", False),
    ("access_tokens", "client_id", False),
    ("resources", "client_id", True),
    ("audit_events", "actor_id", True),
    ("audit_events", "target_id", True),
)


@contextmanager
def _foreign_keys_off() -> Iterator[None]:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        if sqlite:
            with op.get_context().autocommit_block():
                op.execute("PRAGMA foreign_keys=ON")


def _resize(length_from: int, length_to: int) -> None:
    with _foreign_keys_off():
        for table, column, nullable in COLUMNS:
            with op.batch_alter_table(table) as batch:
                batch.alter_column(
                    column,
                    existing_type=sa.String(length=length_from),
                    type_=sa.String(length=length_to),
                    existing_nullable=nullable,
                )


def upgrade() -> None:
    _resize(64, 255)


def downgrade() -> None:
    _resize(255, 64)
