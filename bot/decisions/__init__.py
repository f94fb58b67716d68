"""Reviewer use-cases: approve, edit-and-approve, reject, retry, expire.

The winning click is decided by one conditional UPDATE on the draft (status, version and,
for the two-person rule, the first approver), and the cap is reserved in the same
transaction; a refused reservation or a lost race rolls the whole transaction back.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from bot import caps, policy, watchdogs
from bot.decisions.approval import approve, edit_diff
from bot.decisions.outcomes import (
    Denied,
    Lost,
    Outcome,
    control_refusal,
    enqueue_execution,
    load_draft,
    refuse_audited,
    who_decided,
)
from bot.drafts import record_change
from bot.errors import DecisionRefused
from bot.runtime import Runtime
from bot.schemas import is_blank
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Decision, Draft

__all__ = ["Outcome", "agent_of", "approve", "edit_diff", "expire_due", "reject", "retry"]


def reject(
    rt: Runtime,
    *,
    draft_id: str,
    version: int,
    user: str,
    reviewers: frozenset[str],
    reviewer: policy.Reviewer,
    reason: str,
) -> Outcome:
    """Reject a pending draft with a reason the agent reads."""
    reason = reason.strip()
    if is_blank(reason):
        raise DecisionRefused("A reason is required.")
    try:
        with transaction(rt.engine, audited=True) as session:
            now = rt.clock()
            draft = load_draft(session, draft_id, version)
            refusal = policy.refusal_to_decide(reviewer, reviewers=reviewers, requested_by=None)
            if refusal:
                raise Denied(refusal)
            won = queries.transition(
                session,
                draft.id,
                from_=("pending",),
                to="rejected",
                where={"version": draft.version},
                decided_by=user,
                decided_at=now,
                updated_at=now,
            )
            if not won:
                raise Lost()
            session.add(Decision(draft_id=draft.id, action="reject", by=user, reason=reason, at=now))
            record_change(
                session,
                rt,
                draft,
                actor=f"slack:{user}",
                action="draft.rejected",
                before={"status": "pending"},
                after={"status": "rejected", "reason": reason},
                now=now,
            )
            watchdogs.trip_breaker_if_needed(session, rt, draft.agent_id, now)
    except Lost:
        raise DecisionRefused(who_decided(rt, draft_id)) from None
    except Denied as denied:
        raise refuse_audited(
            rt, user=user, action="draft.reject_denied", subject=draft_id, why=denied.why
        ) from None
    rt.wake_outbox()
    return Outcome(message="Rejected; the agent gets your reason.", final=True)


def retry(
    rt: Runtime,
    *,
    draft_id: str,
    version: int,
    user: str,
    reviewers: frozenset[str],
    reviewer: policy.Reviewer,
) -> Outcome:
    """Send a failed or unreconciled action to the executor again, with the same idempotency key."""
    try:
        # Audited first, as in approve: a pause that commits meanwhile is seen.
        with transaction(rt.engine, audited=True) as session:
            now = rt.clock()
            draft = load_draft(session, draft_id, version)
            refusal = policy.refusal_to_decide(reviewer, reviewers=reviewers, requested_by=draft.requested_by)
            if refusal:
                raise Denied(refusal)
            category = rt.config.categories.get(draft.category)
            if category is None or category.executor is None:
                raise DecisionRefused("This category has no executor to retry.")
            blocked = control_refusal(session, draft, now)
            if blocked:
                raise DecisionRefused(blocked)
            if draft.status == "failed":
                # A failure released the reservation: take it again, or refuse.
                day = policy.cap_day(now, rt.config.timezone)
                agent = session.get(Agent, draft.agent_id)
                if caps.reserve(
                    session,
                    rt.config,
                    category,
                    agent=agent.name if agent else "?",
                    day=day,
                    amount_minor=draft.amount_minor or 0,
                ):
                    raise DecisionRefused("Retrying would exceed today's cap.")
            else:
                day = draft.reservation_day or policy.cap_day(now, rt.config.timezone)
            won = queries.transition(
                session,
                draft.id,
                from_=("failed", "needs_reconciliation"),
                to="approved",
                updated_at=now,
                reservation_day=day,
                execution_status="pending",
                execution_ambiguous=False,
            )
            if not won:
                raise Lost()
            record_change(
                session,
                rt,
                draft,
                actor=f"slack:{user}",
                action="draft.retry",
                before={"status": draft.status},
                after={"status": "approved"},
                now=now,
            )
            enqueue_execution(session, rt, draft, now)
    except Lost:
        raise DecisionRefused(who_decided(rt, draft_id)) from None
    except Denied as denied:
        raise refuse_audited(
            rt, user=user, action="draft.retry_denied", subject=draft_id, why=denied.why
        ) from None
    rt.wake_outbox()
    return Outcome(message="Sent to the executor again with the same idempotency key.", final=True)


def expire_due(rt: Runtime) -> int:
    """Expire every pending draft past its deadline; nothing is ever approved by timeout."""
    now = rt.clock()
    expired = 0
    with transaction(rt.engine, audited=True) as session:
        due = session.exec(
            select(Draft).where(Draft.status == "pending", Draft.expires_at <= now).limit(200)
        ).all()
        for draft in due:
            if queries.transition(
                session, draft.id, from_=("pending",), to="expired", updated_at=now, decided_at=now
            ):
                record_change(
                    session,
                    rt,
                    draft,
                    actor="system:expiry",
                    action="draft.expired",
                    before={"status": "pending"},
                    after={"status": "expired"},
                    now=now,
                )
                expired += 1
    if expired:
        rt.wake_outbox()
    return expired


def agent_of(session: Session, draft: Draft) -> Any:
    return session.get(Agent, draft.agent_id)
