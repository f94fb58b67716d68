"""agent.previous_callback_secret(_until): a rotated callback secret keeps signing for an overlap

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.tables

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent") as batch_op:
        batch_op.add_column(sa.Column("previous_callback_secret", sa.String(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "previous_callback_secret_until", storage.tables.UTCDateTime(timezone=True), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("agent") as batch_op:
        batch_op.drop_column("previous_callback_secret_until")
        batch_op.drop_column("previous_callback_secret")
