"""draft.execution_in_flight: an executor attempt was sent and its outcome is not recorded yet

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("draft") as batch_op:
        batch_op.add_column(
            sa.Column("execution_in_flight", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("draft") as batch_op:
        batch_op.drop_column("execution_in_flight")
