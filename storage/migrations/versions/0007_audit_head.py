"""audit_head: the newest audit row's sequence and hash, moved by every append, so deleting the
newest rows of the log is caught by `audit verify`; it starts at the log's head at upgrade time

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.CheckConstraint("id = 1", name="audit_head_one_row"),
        sa.PrimaryKeyConstraint("id"),
    )
    last = op.get_bind().execute(sa.text("SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")).first()
    seq, digest = (last[0], last[1]) if last else (0, GENESIS)
    op.get_bind().execute(
        sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, :seq, :hash)"), {"seq": seq, "hash": digest}
    )


def downgrade() -> None:
    op.drop_table("audit_head")
