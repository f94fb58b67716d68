"""cap_usage records the caps its last reservation was granted under, and a CHECK holds usage to them

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITHIN_CAP = (
    "(count_cap IS NULL OR count_used <= count_cap)"
    " AND (amount_cap_minor IS NULL OR amount_used_minor <= amount_cap_minor)"
)


def upgrade() -> None:
    # SQLite cannot add a constraint in place: batch mode copies the table (render_as_batch).
    with op.batch_alter_table("cap_usage") as batch_op:
        batch_op.add_column(sa.Column("count_cap", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("amount_cap_minor", sa.BigInteger(), nullable=True))
        batch_op.create_check_constraint("cap_usage_within_cap", WITHIN_CAP)


def downgrade() -> None:
    with op.batch_alter_table("cap_usage") as batch_op:
        batch_op.drop_constraint("cap_usage_within_cap", type_="check")
        batch_op.drop_column("amount_cap_minor")
        batch_op.drop_column("count_cap")
