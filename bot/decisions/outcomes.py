"""How a reviewer's click ends: the Outcome they are told, or a refusal (audited when it is a denial);
and the checks approve, reject and retry share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from bot import audit, policy
from bot.errors import DecisionRefused
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Draft


@dataclass(frozen=True)
class Outcome:
    """What the clicking reviewer is told (privately)."""

    message: str
    final: bool  # the draft reached a decision (False: first of two approvals recorded)
    edited: bool = False  # an approval that changed the text or the amount


class Lost(Exception):
    """Raised inside a transaction to roll it back when another writer won."""


class Denied(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def refuse_audited(rt: Runtime, *, user: str, action: str, subject: str, why: str) -> DecisionRefused:
    now = rt.clock()
    with transaction(rt.engine, audited=True) as session:
        audit.append(
            session,
            at=now,
            actor=f"slack:{user}",
            action=action,
            subject=subject,
            after={"why": why},
            outcome="denied",
        )
    return DecisionRefused(why)


def who_decided(rt: Runtime, draft_id: str) -> str:
    with transaction(rt.engine, write=False) as session:
        draft = session.get(Draft, draft_id)
        if draft is None:
            return "This draft no longer exists."
        if draft.status == "pending":
            return "Someone else acted on this draft at the same moment; look at the message again."
        by = f" by <@{draft.decided_by}>" if draft.decided_by else ""
        return f"Already {draft.status.replace('_', ' ')}{by}."


def control_refusal(session: Session, draft: Draft, now: datetime) -> str | None:
    """Fail closed: a paused agent or a manual category blocks every approval."""
    agent = session.get(Agent, draft.agent_id)
    controls = queries.get_controls(session, ["pause:all", f"mode:{draft.category}"])
    if agent is None or agent.state == "paused" or "pause:all" in controls:
        return "The agent is paused: nothing it drafted can be approved until an admin resumes it."
    if policy.is_manual(controls.get(f"mode:{draft.category}"), now):
        return "This category is in manual mode: handle the request by hand."
    return None


def load_draft(session: Session, draft_id: str, version: int) -> Draft:
    draft = session.get(Draft, draft_id)
    if draft is None:
        raise DecisionRefused("This draft no longer exists.")
    if draft.version != version:
        raise DecisionRefused(
            f"This draft changed since that message was shown; review version {draft.version}."
        )
    return draft


def enqueue_execution(session: Session, rt: Runtime, draft: Draft, now: datetime) -> None:
    """Queue the executor call for an approved draft; the claim re-checks pause and manual mode."""
    queries.enqueue(
        session,
        "executor.call",
        {"draft_id": draft.id},
        now=now,
        agent_id=draft.agent_id,
        category=draft.category,
        max_attempts=rt.executor_attempts,
    )
