"""SQLModel tables: the records of Countersign, one class per table.

Table models skip pydantic validation, so every invariant the data must keep is also a
database CHECK constraint. Times are aware UTC datetimes; money is integer minor units.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

DRAFT_STATUSES = (
    "pending",
    "manual",
    "approved",
    "rejected",
    "expired",
    "cancelled",
    "executed",
    "failed",
    "needs_reconciliation",
    "handled",
)
EXECUTION_STATUSES = ("none", "pending", "succeeded", "failed", "needs_reconciliation")
MANUAL_REASONS = ("agent_paused", "category_manual", "over_cap", "agent_offline")
JOB_STATUSES = ("queued", "running", "done", "dead")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores aware UTC datetimes; SQLite keeps no zone, so naive values are read back as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(**kwargs: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kwargs)


class Agent(SQLModel, table=True):
    __tablename__ = "agent"
    __table_args__ = (
        sa.CheckConstraint("state IN ('active', 'paused')", name="agent_state"),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 40", name="agent_name_length"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    categories: str = ""  # comma-separated category names
    callback_prefixes: str = "[]"  # JSON list of URL prefixes an operator registered
    callback_secret: str  # whsec_…; kept to sign callbacks, shown once by `agents add`
    # After `agents rotate --callback-secret`: the secret it replaced, which also signs callbacks
    # until `previous_callback_secret_until`, so the agent can switch without refusing any.
    previous_callback_secret: str | None = None
    previous_callback_secret_until: datetime | None = _utc(default=None, nullable=True)
    state: str = "active"
    paused_by: str | None = None
    paused_at: datetime | None = _utc(default=None, nullable=True)
    paused_reason: str | None = None
    offline: bool = False
    last_heartbeat_at: datetime | None = _utc(default=None, nullable=True)
    created_at: datetime = _utc()


class AgentToken(SQLModel, table=True):
    __tablename__ = "agent_token"

    id: int | None = Field(default=None, primary_key=True)
    agent_id: int = Field(foreign_key="agent.id", index=True, ondelete="CASCADE")
    token_hash: str = Field(unique=True, index=True)  # sha256 hex; the token itself is never stored
    created_at: datetime = _utc()
    revoked_at: datetime | None = _utc(default=None, nullable=True)


class Draft(SQLModel, table=True):
    __tablename__ = "draft"
    __table_args__ = (
        sa.CheckConstraint(_in("status", DRAFT_STATUSES), name="draft_status"),
        sa.CheckConstraint(_in("execution_status", EXECUTION_STATUSES), name="draft_execution_status"),
        sa.CheckConstraint("amount_minor IS NULL OR amount_minor > 0", name="draft_amount_positive"),
        sa.CheckConstraint("(amount_minor IS NULL) = (currency IS NULL)", name="draft_amount_currency"),
        sa.CheckConstraint("approvals_needed IN (1, 2)", name="draft_approvals_needed"),
        sa.CheckConstraint("version >= 1", name="draft_version"),
        sa.Index("ix_draft_status_created", "status", "created_at"),
        sa.Index("ix_draft_agent_updated", "agent_id", "updated_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    agent_id: int = Field(foreign_key="agent.id")
    category: str = Field(max_length=40)
    status: str = "pending"
    reason: str | None = None
    summary: str
    body: str  # the version under review: the agent's text, or a first approver's edit of it
    agent_body: str | None = None  # the agent's own text, kept once a first approver's edit replaced `body`
    context: str | None = None
    amount_minor: int | None = Field(default=None, sa_type=sa.BigInteger)
    currency: str | None = Field(default=None, max_length=3)
    payload: str = "{}"  # JSON object for the executor
    callback_url: str | None = None
    requested_by: str | None = None
    risk: str = '{"level": "none", "findings": []}'  # JSON
    approved_body: str | None = None
    edited_amount_minor: int | None = Field(default=None, sa_type=sa.BigInteger)
    edited: bool = False
    version: int = 1
    approvals_needed: int = 1
    first_approver: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = _utc(default=None, nullable=True)
    reservation_day: str | None = None  # cap day the approval reserved against, released on failure
    slack_channel: str | None = None
    slack_ts: str | None = None
    execution_status: str = "none"
    execution_attempts: int = 0
    execution_last_error: str | None = None
    execution_ambiguous: bool = False  # an attempt was sent but got no answer: outcome unknown
    # An attempt was sent and its outcome is not recorded yet; still set when the next attempt
    # begins (the process died, or the database failed, before the record): that one is unknown too.
    execution_in_flight: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    expires_at: datetime = _utc()
    created_at: datetime = _utc()
    updated_at: datetime = _utc()


class Decision(SQLModel, table=True):
    __tablename__ = "decision"
    __table_args__ = (
        sa.CheckConstraint(
            "action IN ('approve', 'edit', 'reject', 'claim', 'handled')", name="decision_action"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    draft_id: str = Field(foreign_key="draft.id", index=True)
    action: str
    by: str
    reason: str | None = None
    body_before: str | None = None
    body_after: str | None = None
    at: datetime = _utc()


class IdempotencyRecord(SQLModel, table=True):
    """One agent's Idempotency-Key and the response first given for it (IETF draft semantics)."""

    __tablename__ = "idempotency_record"

    agent_id: int = Field(foreign_key="agent.id", primary_key=True, ondelete="CASCADE")
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str
    response_status: int
    response_body: str
    created_at: datetime = _utc(index=True)


class AuditEvent(SQLModel, table=True):
    """An append-only, hash-chained record of every state change."""

    __tablename__ = "audit_event"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = _utc()
    actor: str
    action: str
    subject: str
    before: str = "null"  # canonical JSON
    after: str = "null"
    outcome: str = "ok"
    prev_hash: str
    hash: str = Field(unique=True)


class AuditHead(SQLModel, table=True):
    """The newest audit row's sequence and hash, moved by every append in the same transaction:
    when the newest rows of the log are deleted, the head still names the last of them, and
    `audit verify` reports them missing (the chain alone could not tell)."""

    __tablename__ = "audit_head"
    __table_args__ = (sa.CheckConstraint("id = 1", name="audit_head_one_row"),)

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int
    hash: str


class OutboxJob(SQLModel, table=True):
    """A durable outbound call (Slack, executor, callback) delivered by the outbox worker."""

    __tablename__ = "outbox_job"
    __table_args__ = (
        sa.CheckConstraint(_in("status", JOB_STATUSES), name="outbox_job_status"),
        sa.CheckConstraint("attempts >= 0 AND max_attempts >= 1", name="outbox_job_attempts"),
        sa.Index("ix_outbox_job_ready", "status", "run_after"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=40)
    payload: str = "{}"
    agent_id: int | None = None  # set for jobs that act for an agent: a pause holds them
    category: str | None = None  # set for jobs a manual category holds
    status: str = "queued"
    attempts: int = 0
    max_attempts: int = 8
    run_after: datetime = _utc()
    lease_until: datetime | None = _utc(default=None, nullable=True)
    claimed_by: str | None = None
    claimed_at: datetime | None = _utc(default=None, nullable=True)
    last_error: str | None = None
    created_at: datetime = _utc()
    finished_at: datetime | None = _utc(default=None, nullable=True)


class CapUsage(SQLModel, table=True):
    """Today's reserved count and amount for one cap scope ("category:refund", "agent:7:refund")."""

    __tablename__ = "cap_usage"
    __table_args__ = (
        sa.CheckConstraint("count_used >= 0 AND amount_used_minor >= 0", name="cap_usage_nonneg"),
        # The database's own guard (AC-07): usage never exceeds the caps in force when it was
        # taken, whatever a future code path does. Lowering a cap below today's usage is allowed:
        # it only stops further reservations, which would have to satisfy the new cap.
        sa.CheckConstraint(
            "(count_cap IS NULL OR count_used <= count_cap)"
            " AND (amount_cap_minor IS NULL OR amount_used_minor <= amount_cap_minor)",
            name="cap_usage_within_cap",
        ),
    )

    scope: str = Field(primary_key=True, max_length=100)
    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD in the configured zone
    count_used: int = 0
    amount_used_minor: int = Field(default=0, sa_type=sa.BigInteger)
    # The caps the latest reservation was granted under (None: no cap), written with it.
    count_cap: int | None = None
    amount_cap_minor: int | None = Field(default=None, sa_type=sa.BigInteger)
    alerted_80: bool = False
    alerted_100: bool = False


class ControlState(SQLModel, table=True):
    """Human-set switches that must survive restarts: pause-all, category modes, cap overrides."""

    __tablename__ = "control_state"

    key: str = Field(primary_key=True, max_length=100)  # "pause:all", "mode:refund", "cap:refund"
    value: str = "{}"  # JSON
    updated_by: str
    updated_at: datetime = _utc()


class ScheduleClaim(SQLModel, table=True):
    """A uniquely keyed claim so a scheduled task (a day's digest) runs once across replicas."""

    __tablename__ = "schedule_claim"

    name: str = Field(primary_key=True, max_length=100)  # "digest:2026-11-24"
    claimed_by: str
    claimed_at: datetime = _utc()
    done_at: datetime | None = _utc(default=None, nullable=True)
    late: bool = False
