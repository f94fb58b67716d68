"""Assemble what a draft's Slack message shows from the database, in one read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlmodel import select

from bot import caps, policy
from bot.runtime import Runtime
from bot.settings import currency_exponent
from handlers.blocks import DecisionLine, DraftCard
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Decision, Draft


@dataclass(frozen=True)
class Placement:
    """Where the message lives (or goes): its channel and, once posted, its ts."""

    channel: str
    ts: str | None


def ai_review_state(status: str, ai: dict[str, Any]) -> tuple[str, str]:
    """(state, note) of the AI review as a card shows it.

    The reviewer reviews pending drafts only: intake never asks it about manual work, and a review
    job that finds its draft no longer pending drops it. So a review still `pending` on any other
    draft is not coming; the card says why rather than "pending" for ever.
    """
    state, note = str(ai.get("status", "off")), str(ai.get("note", ""))
    if state != "pending" or status == "pending":
        return state, note
    return ("manual" if status in ("manual", "handled") else "skipped"), ""


def load_card(rt: Runtime, draft_id: str) -> tuple[DraftCard, Placement] | None:
    """The card for a draft and where to post it; None when the draft or its category is gone."""
    now = rt.clock()
    with transaction(rt.engine, write=False) as session:
        draft = session.get(Draft, draft_id)
        if draft is None:
            return None
        category = rt.config.categories.get(draft.category)
        if category is None:
            return None
        agent = session.get(Agent, draft.agent_id)
        decisions = session.exec(
            select(Decision).where(Decision.draft_id == draft.id).order_by(Decision.id)  # type: ignore[arg-type]
        ).all()
        controls = queries.get_controls(session, ["pause:all", f"mode:{draft.category}"])
        usage = caps.usage(session, rt.config, category, now)
    risk = json.loads(draft.risk)
    ai_status, ai_note = ai_review_state(draft.status, risk.get("ai", {}))
    exponent = currency_exponent(draft.currency) if draft.currency else 2
    amount = (
        None
        if draft.amount_minor is None
        else policy.format_money(draft.amount_minor, draft.currency or "", exponent)
    )
    channel = (
        category.manual_channel if draft.status == "manual" and category.manual_channel else category.channel
    )
    card = DraftCard(
        id=draft.id,
        version=draft.version,
        category=draft.category,
        agent=agent.name if agent else "?",
        status=draft.status,
        reason=draft.reason,
        summary=draft.summary,
        body=draft.body,
        context=draft.context,
        amount=amount,
        approved_body=draft.approved_body,
        agent_body=draft.agent_body,
        edited=draft.edited,
        risk_level=risk.get("level", "none"),
        findings=risk.get("findings", []),
        ai_status=ai_status,
        ai_note=ai_note,
        usage=usage.describe() if category.daily_count_cap or category.daily_amount_cap else None,
        approvals_needed=draft.approvals_needed,
        first_approver=draft.first_approver,
        decisions=[DecisionLine(action=d.action, by=d.by, at=d.at, reason=d.reason) for d in decisions],
        execution_status=draft.execution_status,
        execution_attempts=draft.execution_attempts,
        execution_error=draft.execution_last_error,
        agent_paused=bool(agent and agent.state == "paused") or "pause:all" in controls,
        category_manual=policy.is_manual(controls.get(f"mode:{draft.category}"), now),
        manual_by_config=(controls.get(f"mode:{draft.category}") or {}).get("by") == policy.SET_BY_CONFIG,
        has_executor=category.executor is not None,
        expires_at=draft.expires_at if draft.status == "pending" else None,
        # Expiry stamps decided_at; a withdrawal only updated_at (which only an AI review already
        # under way when the agent withdrew can move later).
        ended_at=(draft.decided_at or draft.updated_at) if draft.status in ("cancelled", "expired") else None,
    )
    return card, Placement(channel=draft.slack_channel or channel, ts=draft.slack_ts)
