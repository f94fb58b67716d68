"""Automatic brakes and alarms: the rejection circuit breaker, missed heartbeats, backlog.

Each one changes state with a conditional UPDATE (or a uniquely keyed claim row), so when
every replica runs the same check the effect and its announcement still happen once.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot import audit
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Draft, ScheduleClaim

DECIDED = ("approved", "rejected", "executed", "failed", "needs_reconciliation")


def _link(draft: Draft) -> str:
    if draft.slack_channel and draft.slack_ts:
        return f"<https://slack.com/archives/{draft.slack_channel}/p{draft.slack_ts.replace('.', '')}|{draft.id}>"
    return f"`{draft.id}`"


def trip_breaker_if_needed(session: Session, rt: Runtime, agent_id: int, now: datetime) -> bool:
    """After a rejection: pause the agent when its recent rejections cross the configured limits."""
    agent = session.get(Agent, agent_id)
    if agent is None or agent.state == "paused":
        return False
    tuning = rt.config.agent_policy(agent.name)
    recent = session.exec(
        select(Draft)
        .where(
            col(Draft.agent_id) == agent_id,
            col(Draft.status).in_(DECIDED),
            col(Draft.decided_at).is_not(None),
        )
        .order_by(col(Draft.decided_at).desc())
        .limit(tuning.breaker_window)
        # The rejection that called us was written with a Core UPDATE: reload, don't trust the identity map.
        .execution_options(populate_existing=True)
    ).all()
    rejected = [d for d in recent if d.status == "rejected"]
    burst_since = now - tuning.breaker_burst_window
    burst = [d for d in rejected if d.decided_at and d.decided_at >= burst_since]
    reason = None
    if len(recent) >= tuning.breaker_window and len(rejected) >= tuning.breaker_reject_ratio * len(recent):
        reason = f"{len(rejected)} of its last {len(recent)} decided drafts were rejected"
    elif len(burst) >= tuning.breaker_burst_count:
        minutes = int(tuning.breaker_burst_window.total_seconds() // 60)
        reason = f"{len(burst)} rejections within {minutes} minutes"
    if reason is None:
        return False
    paused = session.execute(
        sa.update(Agent)
        .where(col(Agent.id) == agent_id, col(Agent.state) == "active")
        .values(
            state="paused", paused_by="system:breaker", paused_at=now, paused_reason=f"auto-paused: {reason}"
        )
    ).rowcount  # type: ignore[attr-defined]
    if paused != 1:
        return False
    audit.append(
        session,
        at=now,
        actor="system:breaker",
        action="agent.paused",
        subject=f"agent:{agent.name}",
        after={"reason": reason, "drafts": [d.id for d in (burst or rejected)[:10]]},
    )
    links = ", ".join(_link(d) for d in (burst or rejected)[:5])
    queries.enqueue(
        session,
        "slack.alert",
        {
            "text": f":octagonal_sign: Auto-paused *{agent.name}*: {reason}. Rejected: {links}. An admin resumes it."
        },
        now=now,
    )
    for draft_id in session.exec(
        select(Draft.id).where(col(Draft.agent_id) == agent_id, col(Draft.status) == "pending").limit(500)
    ).all():
        queries.enqueue(session, "slack.render", {"draft_id": draft_id}, now=now)
    return True


def check_heartbeats(rt: Runtime) -> int:
    """Mark agents offline whose heartbeat is overdue; announce each once."""
    now = rt.clock()
    marked = 0
    with transaction(rt.engine, audited=True) as session:
        for agent in session.exec(
            select(Agent).where(col(Agent.offline).is_(False), col(Agent.categories) != "")
        ).all():
            timeout = rt.config.agent_policy(agent.name).heartbeat_timeout
            if timeout is None:
                continue
            last = agent.last_heartbeat_at or agent.created_at
            if last + timeout >= now:
                continue
            flipped = session.execute(
                sa.update(Agent)
                .where(col(Agent.id) == agent.id, col(Agent.offline).is_(False))
                .values(offline=True)
            ).rowcount  # type: ignore[attr-defined]
            if flipped != 1:
                continue
            audit.append(
                session,
                at=now,
                actor="system:heartbeat",
                action="agent.offline",
                subject=f"agent:{agent.name}",
                after={"last_heartbeat": last.isoformat()},
            )
            queries.enqueue(
                session,
                "slack.alert",
                {
                    "text": f":red_circle: Agent *{agent.name}* missed its heartbeat (last {last:%H:%M} UTC): "
                    "its new work goes to the manual queue until it checks in again."
                },
                now=now,
            )
            marked += 1
    if marked:
        rt.wake_outbox()
    return marked


def check_backlog(rt: Runtime) -> bool:
    """Alert (at most once an hour) when too many drafts wait or the oldest waits too long."""
    limit, max_age = rt.config.watchdog_max_pending, rt.config.watchdog_max_age
    if limit is None and max_age is None:
        return False
    now = rt.clock()
    with transaction(rt.engine, write=False) as session:
        count, oldest = session.execute(
            sa.select(sa.func.count(), sa.func.min(col(Draft.created_at))).where(
                col(Draft.status) == "pending"
            )
        ).one()
    problems = []
    if limit is not None and count > limit:
        problems.append(f"{count} drafts pending (limit {limit})")
    if max_age is not None and oldest is not None and now - oldest > max_age:
        problems.append(f"the oldest has waited {int((now - oldest).total_seconds() // 60)} min")
    if not problems:
        return False
    try:
        with transaction(rt.engine) as session:
            session.add(
                ScheduleClaim(name=f"backlog:{now:%Y-%m-%dT%H}", claimed_by="watchdog", claimed_at=now)
            )
            session.flush()
            queries.enqueue(
                session,
                "slack.alert",
                {"text": ":hourglass: Review backlog: " + "; ".join(problems) + "."},
                now=now,
            )
    except IntegrityError:
        return False  # already alerted this hour (here or on another replica)
    rt.wake_outbox()
    return True
