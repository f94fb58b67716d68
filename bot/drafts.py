"""Agent-side use-cases on drafts after intake: read, withdraw, report done.

Each runs in one transaction that writes the state change, its audit event and the outbox
jobs (Slack message, agent callback) together, so a crash loses nothing and sends nothing twice.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot import audit, caps, policy
from bot.errors import Conflict, NotFound
from bot.runtime import Runtime
from bot.schemas import DoneIn
from bot.settings import currency_exponent
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Decision, Draft

MAX_WAIT_SECONDS = 30


def own_draft(session: Session, agent: Agent, draft_id: str) -> Draft:
    """The agent's draft; another agent's draft is indistinguishable from a missing one."""
    row = session.exec(select(Draft).where(Draft.id == draft_id, Draft.agent_id == agent.id)).first()
    if row is None:
        raise NotFound("no such draft")
    return row


def agent_view(session: Session, draft: Draft) -> dict[str, Any]:
    """The draft as its agent may see it (no approver names beyond Slack ids, no secrets)."""
    decisions = session.exec(
        select(Decision).where(Decision.draft_id == draft.id).order_by(Decision.id)  # type: ignore[arg-type]
    ).all()
    exponent = currency_exponent(draft.currency) if draft.currency else 2
    risk = json.loads(draft.risk)
    return {
        "id": draft.id,
        "status": draft.status,
        "reason": draft.reason,
        "category": draft.category,
        "summary": draft.summary,
        "body": draft.body if draft.agent_body is None else draft.agent_body,
        "context": draft.context,
        "approved_body": draft.approved_body,
        "edited": draft.edited,
        "amount": None
        if draft.amount_minor is None
        else str(policy.from_minor(draft.amount_minor, exponent)),
        "currency": draft.currency,
        "risk": {"level": risk["level"], "findings": risk["findings"]},
        "decisions": [
            {"action": d.action, "by": d.by, "reason": d.reason, "at": d.at.isoformat()}
            for d in decisions
            if d.action in ("approve", "edit", "reject")
        ],
        "execution": {
            "status": draft.execution_status,
            "attempts": draft.execution_attempts,
            "last_error": draft.execution_last_error,
        },
        "created_at": draft.created_at.isoformat(),
        "updated_at": draft.updated_at.isoformat(),
    }


def get(rt: Runtime, *, agent: Agent, draft_id: str) -> dict[str, Any]:
    with transaction(rt.engine, write=False) as session:
        return agent_view(session, own_draft(session, agent, draft_id))


def status_of(rt: Runtime, *, agent: Agent, draft_id: str) -> str:
    with transaction(rt.engine, write=False) as session:
        row = session.execute(
            sa.select(col(Draft.status)).where(col(Draft.id) == draft_id, col(Draft.agent_id) == agent.id)
        ).first()
        if row is None:
            raise NotFound("no such draft")
        return str(row[0])


def record_change(
    session: Session,
    rt: Runtime,
    draft: Draft,
    *,
    actor: str,
    action: str,
    before: dict[str, Any],
    after: dict[str, Any],
    now: datetime,
) -> None:
    """The side effects of every draft state change: audit, Slack message refresh, agent callback.

    The callback carries the draft as this change left it, stored with its job: every retry sends
    the same message under the same webhook-id, and a later change does not rewrite an earlier event.
    """
    audit.append(session, at=now, actor=actor, action=action, subject=draft.id, before=before, after=after)
    queries.enqueue(session, "slack.render", {"draft_id": draft.id}, now=now)
    if draft.callback_url:
        view = agent_view(session, _as_written(session, draft.id))
        queries.enqueue(
            session,
            "callback.send",
            {"draft_id": draft.id, "event": action, "status": view["status"], "draft": view},
            now=now,
            agent_id=draft.agent_id,  # its target: one agent's slow endpoint holds few slots
        )


def _as_written(session: Session, draft_id: str) -> Draft:
    """The draft's row as this transaction has written it, detached: state changes are conditional
    Core UPDATEs, so the caller's ORM object may still show the row before them (and its caller
    may still need that)."""
    row = session.execute(sa.select(queries.draft_t).where(queries.draft_t.c.id == draft_id)).mappings().one()
    return Draft(**row)


def cancel(rt: Runtime, *, agent: Agent, draft_id: str) -> dict[str, Any]:
    """Withdraw a pending draft."""
    with transaction(rt.engine, audited=True) as session:
        draft = own_draft(session, agent, draft_id)
        now = rt.clock()
        if not queries.transition(session, draft.id, from_=("pending",), to="cancelled", updated_at=now):
            raise Conflict(f"draft is {draft.status}, only a pending draft can be withdrawn")
        record_change(
            session,
            rt,
            draft,
            actor=f"agent:{agent.name}",
            action="draft.cancelled",
            before={"status": draft.status},
            after={"status": "cancelled"},
            now=now,
        )
        session.refresh(draft)
        view = agent_view(session, draft)
    rt.wake_outbox()
    return view


def report_done(rt: Runtime, *, agent: Agent, draft_id: str, done: DoneIn) -> dict[str, Any]:
    """The agent carried out an approved action of a category without an executor."""
    with transaction(rt.engine, audited=True) as session:
        draft = own_draft(session, agent, draft_id)
        category = rt.config.categories.get(draft.category)
        if category is not None and category.executor is not None:
            raise Conflict("this category has an executor; Countersign carries out its actions")
        now = rt.clock()
        to = "executed" if done.ok else "failed"
        moved = queries.transition(
            session,
            draft.id,
            from_=("approved",),
            to=to,
            updated_at=now,
            execution_status="succeeded" if done.ok else "failed",
            execution_attempts=draft.execution_attempts + 1,
            execution_last_error=None if done.ok else (done.detail or "agent reported failure"),
        )
        if not moved:
            raise Conflict(f"draft is {draft.status}, not approved")
        if not done.ok and draft.reservation_day and category is not None:
            caps.release(
                session,
                category=category.name,
                agent=agent.name,
                day=draft.reservation_day,
                amount_minor=draft.amount_minor or 0,
            )
        record_change(
            session,
            rt,
            draft,
            actor=f"agent:{agent.name}",
            action=f"draft.{to}",
            before={"status": "approved"},
            after={"status": to, "detail": done.detail},
            now=now,
        )
        session.refresh(draft)
        view = agent_view(session, draft)
    rt.wake_outbox()
    return view
