"""drop slack_event_seen: never written; the one Slack event handled (app_home_opened) republishes
the Home tab, which a redelivery repeats harmlessly

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import storage.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("slack_event_seen")


def downgrade() -> None:
    op.create_table(
        "slack_event_seen",
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("seen_at", storage.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
