"""The atomic operations: conditional transitions, cap reservation, outbox enqueue and claim.

Every decision that must hold under concurrency is one statement whose WHERE clause checks
the old state; the caller learns from the row count whether it won.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from storage.db import transaction
from storage.rawsql import RawCursor
from storage.tables import Agent, AgentToken, CapUsage, ControlState, Draft, IdempotencyRecord, OutboxJob

draft_t = Draft.__table__  # type: ignore[attr-defined]
agent_t = Agent.__table__  # type: ignore[attr-defined]
token_t = AgentToken.__table__  # type: ignore[attr-defined]
cap_t = CapUsage.__table__  # type: ignore[attr-defined]
control_t = ControlState.__table__  # type: ignore[attr-defined]
job_t = OutboxJob.__table__  # type: ignore[attr-defined]
idempotency_t = IdempotencyRecord.__table__  # type: ignore[attr-defined]


def agent_for_token(session: Session, token_hash: str) -> Agent | None:
    """The agent whose live token hashes to `token_hash`."""
    row = session.execute(
        sa.select(Agent)
        .join(AgentToken, col(AgentToken.agent_id) == col(Agent.id))
        .where(col(AgentToken.token_hash) == token_hash, col(AgentToken.revoked_at).is_(None))
    ).first()
    return row[0] if row else None


def set_heartbeat(session: Session, agent_id: int, now: datetime, *, online_only: bool = False) -> bool:
    """Record a heartbeat; True when the agent had been marked offline. With `online_only`, only
    for an agent that is online, and True when it was recorded."""
    if online_only:
        return bool(
            session.execute(
                sa.update(agent_t)
                .where(agent_t.c.id == agent_id, agent_t.c.offline.is_(False))
                .values(last_heartbeat_at=now)
            ).rowcount  # type: ignore[attr-defined]
        )
    was_offline = session.execute(
        sa.update(agent_t).where(agent_t.c.id == agent_id, agent_t.c.offline.is_(True)).values(offline=False)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(sa.update(agent_t).where(agent_t.c.id == agent_id).values(last_heartbeat_at=now))
    return was_offline == 1  # type: ignore[no-any-return]


def transition(session: Session, draft_id: str, *, from_: Iterable[str], to: str, **values: Any) -> bool:
    """Move a draft out of one of `from_` into `to`; False when another writer got there first."""
    where = [draft_t.c.id == draft_id, draft_t.c.status.in_(list(from_))]
    for name, expected in values.pop("where", {}).items():
        where.append(draft_t.c[name].is_(None) if expected is None else draft_t.c[name] == expected)
    result = session.execute(sa.update(draft_t).where(*where).values(status=to, **values))
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def update_draft(session: Session, draft_id: str, *, where: dict[str, Any], **values: Any) -> bool:
    """A conditional UPDATE of a draft's columns, guarded by exact column values."""
    clauses = [draft_t.c.id == draft_id]
    for name, expected in where.items():
        column = draft_t.c[name]
        if isinstance(expected, list | tuple | set | frozenset):
            clauses.append(column.in_(list(expected)))
        else:
            clauses.append(column.is_(None) if expected is None else column == expected)
    result = session.execute(sa.update(draft_t).where(*clauses).values(**values))
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def cap_usage(session: Session, scope: str, day: str) -> tuple[int, int]:
    """(count_used, amount_used_minor) for a scope and day; zero when nothing was reserved."""
    row = session.execute(
        sa.select(cap_t.c.count_used, cap_t.c.amount_used_minor).where(
            cap_t.c.scope == scope, cap_t.c.day == day
        )
    ).first()
    return (row[0], row[1]) if row else (0, 0)


def reserve_cap(
    session: Session,
    *,
    scope: str,
    day: str,
    amount_minor: int,
    count_cap: int | None,
    amount_cap_minor: int | None,
) -> tuple[int, int] | None:
    """Reserve one action and its amount, only while it stays within both caps.

    Returns the new usage, or None when it would not fit. The check and the increment are one
    UPDATE, so concurrent approvals on any number of replicas can never overshoot.
    """
    session.execute(
        sa.text(
            "INSERT INTO cap_usage (scope, day, count_used, amount_used_minor, alerted_80, alerted_100) "
            "VALUES (:scope, :day, 0, 0, false, false) ON CONFLICT DO NOTHING"
        ),
        {"scope": scope, "day": day},
    )
    conditions = [cap_t.c.scope == scope, cap_t.c.day == day]
    if count_cap is not None:
        conditions.append(cap_t.c.count_used + 1 <= count_cap)
    if amount_cap_minor is not None:
        conditions.append(cap_t.c.amount_used_minor + amount_minor <= amount_cap_minor)
    row = session.execute(
        sa.update(cap_t)
        .where(*conditions)
        .values(
            count_used=cap_t.c.count_used + 1,
            amount_used_minor=cap_t.c.amount_used_minor + amount_minor,
            # With them, the row's CHECK (cap_usage_within_cap) holds usage to these caps.
            count_cap=count_cap,
            amount_cap_minor=amount_cap_minor,
        )
        .returning(cap_t.c.count_used, cap_t.c.amount_used_minor)
    ).first()
    return (row[0], row[1]) if row else None


def release_cap(session: Session, *, scope: str, day: str, amount_minor: int) -> None:
    """Give back one reservation (reject after reserve, execution failure)."""
    session.execute(
        sa.update(cap_t)
        .where(cap_t.c.scope == scope, cap_t.c.day == day, cap_t.c.count_used >= 1)
        .values(
            count_used=cap_t.c.count_used - 1,
            amount_used_minor=sa.func.max(cap_t.c.amount_used_minor - amount_minor, 0)
            if session.get_bind().dialect.name == "sqlite"
            else sa.func.greatest(cap_t.c.amount_used_minor - amount_minor, 0),
        )
    )


def mark_cap_alert(session: Session, scope: str, day: str, column: str) -> bool:
    """Flip one of the once-a-day alert flags; True only for the writer that flipped it."""
    result = session.execute(
        sa.update(cap_t)
        .where(cap_t.c.scope == scope, cap_t.c.day == day, cap_t.c[column].is_(False))
        .values({column: True})
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def rearm_cap_alerts(session: Session, scope: str, day: str, *, below_80: bool, below_100: bool) -> None:
    """Clear the alert flags whose threshold today's usage is below again (a raised cap)."""
    values = {name: False for name, below in (("alerted_80", below_80), ("alerted_100", below_100)) if below}
    if values:
        session.execute(sa.update(cap_t).where(cap_t.c.scope == scope, cap_t.c.day == day).values(values))


def get_control(session: Session, key: str) -> dict[str, Any] | None:
    row = session.execute(sa.select(control_t.c.value).where(control_t.c.key == key)).first()
    return json.loads(row[0]) if row else None


@functools.cache
def _controls_query() -> sa.Select[Any]:
    return sa.select(control_t.c.key, control_t.c.value).where(
        control_t.c.key.in_(sa.bindparam("keys", expanding=True))
    )


def get_controls(session: Session, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    rows = session.connection().execute(_controls_query(), {"keys": list(keys)})
    return {key: json.loads(value) for key, value in rows}


def set_control(session: Session, key: str, value: dict[str, Any] | None, *, by: str, at: datetime) -> None:
    """Write (or with None, delete) one control switch: one upsert, so two writers of the same
    switch at once never collide on its primary key."""
    if value is None:
        session.execute(sa.delete(control_t).where(control_t.c.key == key))
        return
    dialect = session.get_bind().dialect.name
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(control_t)
    fields = {"value": json.dumps(value), "updated_by": by, "updated_at": at}
    session.execute(
        upsert.values(key=key, **fields).on_conflict_do_update(index_elements=[control_t.c.key], set_=fields)
    )


def add_control(session: Session, key: str, value: dict[str, Any], *, by: str, at: datetime) -> bool:
    """Set a switch that is not set yet; False, changing nothing, when it already is."""
    table = control_t
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT DO NOTHING.
    added = session.execute(
        insert.values(key=key, value=json.dumps(value), updated_by=by, updated_at=at)
        .on_conflict_do_nothing(index_elements=[table.c.key])
        .returning(table.c.key)
    )
    return added.first() is not None


def drop_control(session: Session, key: str) -> bool:
    """Delete a switch; False when it was not set (or another writer just deleted it)."""
    table = control_t
    dropped = session.execute(sa.delete(table).where(table.c.key == key))
    return dropped.rowcount == 1  # type: ignore[attr-defined,no-any-return]


ATTEMPTS = 8  # an outside endpoint's job gives up after these (about 4 minutes of backoff)
# Slack's jobs (a card's update, an alert, a thread reply) outlast a Slack outage of days: backoff
# is capped at 5 minutes, and Slack's refusals that no retry changes end them at once.
SLACK_ATTEMPTS = 1000


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    agent_id: int | None = None,
    category: str | None = None,
    max_attempts: int | None = None,
    delay: timedelta = timedelta(0),
) -> None:
    """Add a durable outbound job in the caller's transaction."""
    enqueue_many(
        session,
        [
            job(
                kind,
                payload,
                now=now,
                agent_id=agent_id,
                category=category,
                max_attempts=max_attempts,
                delay=delay,
            )
        ],
    )


def job(
    kind: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    agent_id: int | None = None,
    category: str | None = None,
    max_attempts: int | None = None,
    delay: timedelta = timedelta(0),
) -> dict[str, Any]:
    """The row of a new outbox job, for enqueue_many (`max_attempts` by default: see ATTEMPTS)."""
    if max_attempts is None:
        max_attempts = SLACK_ATTEMPTS if kind.startswith("slack.") else ATTEMPTS
    return {
        "kind": kind,
        "payload": json.dumps(payload),
        "agent_id": agent_id,
        "category": category,
        "status": "queued",
        "attempts": 0,
        "max_attempts": max_attempts,
        "run_after": now + delay,
        "created_at": now,
    }


_JOB_COLUMNS = (
    "kind",
    "payload",
    "agent_id",
    "category",
    "status",
    "attempts",
    "max_attempts",
    "run_after",
    "created_at",
)


def enqueue_many(session: Session, jobs: list[dict[str, Any]]) -> None:
    """Insert many outbox jobs (rows from `job`) with one driver statement (intake's hot path)."""
    if not jobs:
        return
    RawCursor.of(session).insert("outbox_job", _JOB_COLUMNS, [[job[c] for c in _JOB_COLUMNS] for job in jobs])


# Jobs that act for an agent are held while it (or everyone) is paused or its category is manual;
# the claim itself checks, so no such job is claimed after a pause commits.
_HELD_BY_CONTROL = {"executor.call"}


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    ready = sa.or_(
        sa.and_(job_t.c.status == "queued", job_t.c.run_after <= now),
        sa.and_(job_t.c.status == "running", job_t.c.lease_until < now),
    )
    paused_agent = sa.exists().where(agent_t.c.id == job_t.c.agent_id, agent_t.c.state == "paused")
    pause_all = sa.exists().where(control_t.c.key == "pause:all")
    manual_category = sa.exists().where(control_t.c.key == sa.literal("mode:") + job_t.c.category)
    held = sa.and_(job_t.c.kind.in_(_HELD_BY_CONTROL), sa.or_(paused_agent, pause_all, manual_category))
    return sa.and_(ready, sa.not_(held))


def job_target(kind: str, category: str | None, agent_id: int | None) -> str | None:
    """The outside endpoint a job calls, where one slow endpoint must not take every delivery
    slot: a category's executor, an agent's callback URL. None for the rest (Slack keeps its own
    pace per channel, bot/slack.py)."""
    if kind == "executor.call" and category is not None:
        return f"executor:{category}"
    if kind == "callback.send" and agent_id is not None:
        return f"callback:{agent_id}"
    return None


def _not_full(full: set[str]) -> sa.ColumnElement[bool]:
    """Jobs whose target is not in `full` (targets as job_target names them)."""
    executors = [t.removeprefix("executor:") for t in full if t.startswith("executor:")]
    callbacks = [int(t.removeprefix("callback:")) for t in full if t.startswith("callback:")]
    return sa.and_(
        sa.or_(
            job_t.c.kind != "executor.call", job_t.c.category.is_(None), job_t.c.category.not_in(executors)
        ),
        sa.or_(
            job_t.c.kind != "callback.send", job_t.c.agent_id.is_(None), job_t.c.agent_id.not_in(callbacks)
        ),
    )


def claim_jobs(
    engine: Engine,
    *,
    worker: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    in_flight: Mapping[str, int] | None = None,
    per_target: int | None = None,
) -> list[OutboxJob]:
    """Atomically take up to `limit` ready jobs (or jobs whose lease ran out) for this worker.

    With `per_target`, jobs of one target (job_target) are taken only while this worker has fewer
    than that many of them in flight (`in_flight`, by target), counting the ones taken now.
    """
    busy = dict(in_flight or {})
    full = {target for target, count in busy.items() if per_target is not None and count >= per_target}
    with transaction(engine) as session:
        ids_query = (
            sa.select(job_t.c.id, job_t.c.kind, job_t.c.category, job_t.c.agent_id)
            .where(_claimable(now), _not_full(full))
            .order_by(job_t.c.run_after)
            .limit(limit if per_target is None else 2 * limit)
        )
        if engine.dialect.name == "postgresql":
            ids_query = ids_query.with_for_update(skip_locked=True, of=job_t)
        ids = []
        for job_id, kind, category, agent_id in session.execute(ids_query):
            target = job_target(kind, category, agent_id)
            if per_target is not None and target is not None:
                if busy.get(target, 0) >= per_target:
                    continue
                busy[target] = busy.get(target, 0) + 1
            ids.append(job_id)
            if len(ids) == limit:
                break
        if not ids:
            return []
        rows = session.execute(
            sa.update(job_t)
            .where(job_t.c.id.in_(ids))
            .values(
                status="running",
                attempts=job_t.c.attempts + 1,
                lease_until=now + lease,
                claimed_by=worker,
                claimed_at=now,
            )
            .returning(*job_t.c)
        ).all()
        return [OutboxJob.model_validate(dict(row._mapping)) for row in rows]


def finish_job(session: Session, job_id: int, *, worker: str, now: datetime) -> bool:
    """Mark a job done, only if this worker still holds it."""
    result = session.execute(
        sa.update(job_t)
        .where(job_t.c.id == job_id, job_t.c.status == "running", job_t.c.claimed_by == worker)
        .values(status="done", finished_at=now, lease_until=None)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def release_job(session: Session, job_id: int, *, worker: str, run_after: datetime) -> bool:
    """Give a job back untried, only if this worker still holds it: queued again for `run_after`,
    and the attempt its claim counted taken back."""
    result = session.execute(
        sa.update(job_t)
        .where(job_t.c.id == job_id, job_t.c.status == "running", job_t.c.claimed_by == worker)
        .values(status="queued", run_after=run_after, lease_until=None, attempts=job_t.c.attempts - 1)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def fail_job(
    session: Session, job_id: int, *, worker: str, error: str, retry_at: datetime | None, now: datetime
) -> bool:
    """Record an attempt's error; requeue it for `retry_at`, or mark it dead when None."""
    values: dict[str, Any] = {"last_error": error[:2000], "lease_until": None}
    if retry_at is None:
        values.update(status="dead", finished_at=now)
    else:
        values.update(status="queued", run_after=retry_at)
    result = session.execute(
        sa.update(job_t)
        .where(job_t.c.id == job_id, job_t.c.status == "running", job_t.c.claimed_by == worker)
        .values(**values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def delete_finished_jobs(session: Session, *, status: str, finished_before: datetime, limit: int) -> int:
    """Delete up to `limit` jobs in `status` (done or dead) that finished before `finished_before`."""
    ids = (
        sa.select(job_t.c.id)
        .where(job_t.c.status == status, job_t.c.finished_at < finished_before)
        .order_by(job_t.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL: replicas sweeping at once take turns, never wait
    )
    result = session.execute(sa.delete(job_t).where(job_t.c.id.in_(ids)))
    return result.rowcount  # type: ignore[attr-defined,no-any-return]


def delete_idempotency_records(session: Session, *, created_before: datetime, limit: int) -> int:
    """Delete up to `limit` stored Idempotency-Key answers made before `created_before`."""
    keys = (
        sa.select(idempotency_t.c.agent_id, idempotency_t.c.key)
        .where(idempotency_t.c.created_at < created_before)
        .order_by(idempotency_t.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        sa.delete(idempotency_t).where(sa.tuple_(idempotency_t.c.agent_id, idempotency_t.c.key).in_(keys))
    )
    return result.rowcount  # type: ignore[attr-defined,no-any-return]
