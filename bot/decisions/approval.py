"""Approve and edit-and-approve: one or two approvals, the cap reserved in the same transaction,
and the alerts when a cap fills up."""

from __future__ import annotations

import difflib
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from bot import caps, crashpoints, policy
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
from bot.errors import CapRefused, DecisionRefused
from bot.mrkdwn import escape
from bot.runtime import Runtime
from bot.settings import Category, currency_exponent
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Decision, Draft

log = logging.getLogger(__name__)


def approve(
    rt: Runtime,
    *,
    draft_id: str,
    version: int,
    user: str,
    reviewers: frozenset[str],
    reviewer: policy.Reviewer,
    edited_body: str | None = None,
    edited_amount: Decimal | None = None,
) -> Outcome:
    """Approve (or edit and approve) a pending draft for `user`; raises DecisionRefused."""
    try:
        # The audit chain's lock comes first: every other audited change (a pause, manual mode, a
        # cap change) is serialized with this one before the control state is read, so on
        # PostgreSQL a pause committing meanwhile cannot go unseen and this approval commit after it.
        with transaction(rt.engine, audited=True) as session:
            outcome = _approve_in(
                session, rt, draft_id, version, user, reviewers, reviewer, edited_body, edited_amount
            )
        crashpoints.reached("after_approve_commit")
        rt.wake_outbox()
        return outcome
    except Lost:
        raise DecisionRefused(who_decided(rt, draft_id)) from None
    except Denied as denied:
        raise refuse_audited(
            rt, user=user, action="draft.approve_denied", subject=draft_id, why=denied.why
        ) from None
    except CapRefused:
        # The reviewer is told today's usage; the card, posted when less was used, shows it too.
        # The refusal stands whatever happens to that refresh: it is no reason to answer "cannot
        # read the control state" instead.
        try:
            with transaction(rt.engine) as session:
                queries.enqueue(session, "slack.render", {"draft_id": draft_id}, now=rt.clock())
        except SQLAlchemyError:
            log.warning(
                "draft %s: the card refresh after a cap refusal was not queued", draft_id, exc_info=True
            )
        else:
            rt.wake_outbox()
        raise


def _approve_in(
    session: Session,
    rt: Runtime,
    draft_id: str,
    version: int,
    user: str,
    reviewers: frozenset[str],
    reviewer: policy.Reviewer,
    edited_body: str | None,
    edited_amount: Decimal | None,
) -> Outcome:
    now = rt.clock()
    draft = load_draft(session, draft_id, version)
    refusal = policy.refusal_to_decide(reviewer, reviewers=reviewers, requested_by=draft.requested_by)
    if refusal:
        raise Denied(refusal)
    if draft.status != "pending":
        raise Lost()
    if draft.expires_at <= now:
        raise DecisionRefused("This draft expired before it was decided; nothing was done.")
    blocked = control_refusal(session, draft, now)
    if blocked:
        raise DecisionRefused(blocked)
    category = rt.config.categories.get(draft.category)
    if category is None:
        raise DecisionRefused(
            f"Category {draft.category!r} is no longer configured; nothing can be approved."
        )
    exponent = currency_exponent(category.currency)
    amount_minor = draft.amount_minor
    if edited_amount is not None:
        if draft.amount_minor is None:
            raise DecisionRefused("This draft has no amount, so none can be edited in.")
        amount_minor = policy.to_minor(edited_amount, exponent)
        too_much = policy.edited_amount_problem(edited_amount, category.max_amount)
        if too_much:
            raise DecisionRefused(too_much)
    if edited_body is not None:
        too_long = policy.too_long_to_edit(draft.body)
        if too_long:  # the modal could only have shown (and sent back) part of it
            raise DecisionRefused(too_long)
    body_after = draft.body if edited_body is None else edited_body
    # Submitting the Edit modal unchanged is an approval of the draft as it is, not an edit.
    edited = (body_after, amount_minor) != (draft.body, draft.amount_minor)
    action = "edit" if edited else "approve"

    needs_two = (
        draft.approvals_needed == 2
        or policy.approvals_needed(
            amount=None if amount_minor is None else policy.from_minor(amount_minor, exponent),
            two_person_above=category.two_person_above,
            high_risk=False,
        )
        == 2
    )
    if needs_two and draft.first_approver is None:
        return _first_approval(session, rt, draft, user, action, body_after, amount_minor, now)
    if needs_two and draft.first_approver == user:
        raise DecisionRefused(policy.FIRST_APPROVER_AGAIN)
    if needs_two and (body_after, amount_minor) != (draft.body, draft.amount_minor):
        # Nobody else has seen the edited version: the editor's approval becomes the first one on it.
        return _first_approval(session, rt, draft, user, action, body_after, amount_minor, now)

    day = policy.cap_day(now, rt.config.timezone)
    agent = session.get(Agent, draft.agent_id)
    agent_name = agent.name if agent else "?"
    refused = caps.reserve(
        session, rt.config, category, agent=agent_name, day=day, amount_minor=amount_minor or 0
    )
    if refused == "category":
        usage = caps.usage(session, rt.config, category, now)
        raise CapRefused(f"Approving would exceed today's cap ({usage.describe()}). The draft stays pending.")
    if refused == "agent":
        usage = caps.agent_usage(session, rt.config, category, agent_name, day)
        raise CapRefused(
            f"Approving would exceed {agent_name}'s own daily cap ({usage.describe()}). The draft stays pending."
        )
    won = queries.transition(
        session,
        draft.id,
        from_=("pending",),
        to="approved",
        where={"version": draft.version, "first_approver": draft.first_approver},
        decided_by=user,
        decided_at=now,
        updated_at=now,
        approved_body=body_after,
        edited=action == "edit" or draft.edited,
        amount_minor=amount_minor,
        reservation_day=day,
        execution_status="pending" if category.executor else "none",
    )
    if not won:
        raise Lost()
    _record_decision(
        session,
        rt,
        draft,
        user=user,
        action=action,
        body_after=body_after,
        now=now,
        event="draft.approved",
        before={"status": "pending", "amount_minor": draft.amount_minor},
        after={"status": "approved", "edited": action == "edit", "amount_minor": amount_minor},
        post_diff=action == "edit" and body_after != draft.body,
    )
    if category.executor is not None:
        enqueue_execution(session, rt, draft, now)
    session.flush()
    usage = caps.usage(session, rt.config, category, now)
    _cap_alerts(session, rt, category, usage, now)
    return Outcome(message=f"Approved. Today's cap: {usage.describe()}.", final=True, edited=action == "edit")


def _record_decision(
    session: Session,
    rt: Runtime,
    draft: Draft,
    *,
    user: str,
    action: str,
    body_after: str,
    now: datetime,
    event: str,
    before: dict[str, Any],
    after: dict[str, Any],
    post_diff: bool,
) -> None:
    """The won approval's record: the decision row, its audit event, and the edit's diff in the thread."""
    session.add(
        Decision(
            draft_id=draft.id, action=action, by=user, body_before=draft.body, body_after=body_after, at=now
        )
    )
    record_change(
        session, rt, draft, actor=f"slack:{user}", action=event, before=before, after=after, now=now
    )
    if post_diff:
        queries.enqueue(
            session,
            "slack.thread",
            {"draft_id": draft.id, "text": edit_diff(draft.body, body_after, user)},
            now=now,
        )


def _first_approval(
    session: Session,
    rt: Runtime,
    draft: Draft,
    user: str,
    action: str,
    body_after: str,
    amount_minor: int | None,
    now: datetime,
) -> Outcome:
    """Record the first of two approvals; an edit becomes the new version the second approver sees."""
    changed = body_after != draft.body or amount_minor != draft.amount_minor
    won = queries.update_draft(
        session,
        draft.id,
        where={"status": "pending", "version": draft.version, "first_approver": draft.first_approver},
        first_approver=user,
        approvals_needed=2,
        body=body_after,
        agent_body=draft.body if draft.agent_body is None else draft.agent_body,
        edited=draft.edited or changed,
        amount_minor=amount_minor,
        version=draft.version + (1 if changed else 0),
        updated_at=now,
    )
    if not won:
        raise Lost()
    _record_decision(
        session,
        rt,
        draft,
        user=user,
        action=action,
        body_after=body_after,
        now=now,
        event="draft.first_approval",
        before={"first_approver": draft.first_approver, "version": draft.version},
        after={"first_approver": user, "edited": changed},
        post_diff=changed,
    )
    rt.wake_outbox()
    return Outcome(
        message="First approval recorded; a second, different reviewer has to approve.", final=False
    )


def _cap_alerts(session: Session, rt: Runtime, category: Category, usage: caps.Usage, now: datetime) -> None:
    """Alert once per day (and cap, after an admin raises it) when a cap passes 80% and when it is
    reached; reaching it at one step passes 80% silently."""
    peak, scope = usage.peak(), caps.scope(category.name)
    if peak >= 1.0:
        reached = queries.mark_cap_alert(session, scope, usage.day, "alerted_100")
        queries.mark_cap_alert(session, scope, usage.day, "alerted_80")
        level = "reached" if reached else None
    elif peak >= 0.8 and queries.mark_cap_alert(session, scope, usage.day, "alerted_80"):
        level = "passed 80% of"
    else:
        level = None
    if level:
        queries.enqueue(
            session,
            "slack.alert",
            {"text": f":bar_chart: Category *{category.name}* has {level} today's cap: {usage.describe()}."},
            now=now,
        )


def edit_diff(before: str, after: str, user: str) -> str:
    """A unified diff of an edit, for the message thread."""
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), "agent draft", "approved", lineterm="", n=1
    )
    diff = "\n".join(lines)
    fence = "`" * 3
    # Both versions are escaped: a code block does not stop Slack from reading <!channel> or <@U…>.
    safe = escape(diff[:2800].replace(fence, "'" * 3))
    return f"<@{user}> edited the draft before approving:\n{fence}\n{safe}\n{fence}"
