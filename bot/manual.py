"""The manual queue: work a human took over (paused agent, manual category, over cap, offline)."""

from __future__ import annotations

from sqlmodel import select

from bot.decisions import Outcome
from bot.drafts import record_change
from bot.errors import DecisionRefused
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Decision, Draft


def act(rt: Runtime, *, draft_id: str, user: str, action: str) -> Outcome:
    """`claim` marks who handles a manual item; `handled` closes it."""
    now = rt.clock()
    with transaction(rt.engine, audited=True) as session:
        draft = session.get(Draft, draft_id)
        if draft is None or draft.status != "manual":
            raise DecisionRefused("This item is no longer in the manual queue.")
        if action == "claim":
            # Read after the audit lock (taken first by this transaction): two claims at once are
            # decided one after the other, and the second sees the first.
            holder = session.exec(
                select(Decision.by).where(Decision.draft_id == draft.id, Decision.action == "claim")
            ).first()
            if holder == user:
                return Outcome(message="You have already claimed this item.", final=False)
            if holder is not None:
                raise DecisionRefused(f"<@{holder}> has already claimed this item.")
            session.add(Decision(draft_id=draft.id, action="claim", by=user, at=now))
            record_change(
                session,
                rt,
                draft,
                actor=f"slack:{user}",
                action="manual.claimed",
                before={"status": "manual"},
                after={"status": "manual", "claimed_by": user},
                now=now,
            )
            message = "Claimed: it's yours."
        else:
            if not queries.transition(
                session,
                draft.id,
                from_=("manual",),
                to="handled",
                decided_by=user,
                decided_at=now,
                updated_at=now,
            ):
                raise DecisionRefused("Someone else closed this item.")
            session.add(Decision(draft_id=draft.id, action="handled", by=user, at=now))
            record_change(
                session,
                rt,
                draft,
                actor=f"slack:{user}",
                action="manual.handled",
                before={"status": "manual"},
                after={"status": "handled"},
                now=now,
            )
            message = "Marked as handled."
    rt.wake_outbox()
    return Outcome(message=message, final=action != "claim")
