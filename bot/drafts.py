"""Agent-side use-cases on drafts: submit, read, withdraw, report done.

Each runs in one transaction that writes the state change, its audit event and the outbox
jobs (Slack message, agent callback) together, so a crash loses nothing and sends nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot import audit, caps, policy
from bot.errors import Conflict, Forbidden, IdempotencyMismatch, Invalid, NotFound
from bot.risk import RiskRules, check_rules, risk_level
from bot.runtime import Runtime
from bot.schemas import DoneIn, DraftIn
from bot.settings import Category, currency_exponent
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Decision, Draft, IdempotencyRecord

IDEMPOTENCY_RETENTION = timedelta(hours=24)
MAX_WAIT_SECONDS = 30


def request_fingerprint(draft: DraftIn) -> str:
    """Hash of the request as parsed, so the same request spelled differently is still the same."""
    fields = draft.model_dump(exclude={"idempotency_key"}, exclude_none=True)
    return hashlib.sha256(audit.canonical(fields).encode()).hexdigest()


def agent_categories(agent: Agent) -> list[str]:
    return [name for name in agent.categories.split(",") if name]


def risk_rules(category: Category) -> RiskRules:
    return RiskRules(
        money=category.money,
        max_amount=category.max_amount,
        currency=category.currency,
        allowed_link_domains=category.allowed_link_domains,
        forbidden_phrases=category.forbidden_phrases,
    )


def _validate(rt: Runtime, agent: Agent, draft: DraftIn) -> tuple[Category, Decimal | None, str | None]:
    category = rt.config.categories.get(draft.category)
    if category is None:
        raise Invalid(f"unknown category {draft.category!r}", field="category")
    if draft.category not in agent_categories(agent):
        raise Forbidden(
            f"agent {agent.name!r} may not submit to category {draft.category!r}", field="category"
        )
    amount: Decimal | None = None
    currency: str | None = None
    if draft.amount is not None:
        currency = draft.currency or category.currency
        if currency != category.currency:
            raise Invalid(f"category {category.name!r} works in {category.currency}", field="currency")
        try:
            amount = policy.parse_api_amount(draft.amount, currency_exponent(currency))
        except ValueError as exc:
            raise Invalid(str(exc), field="amount") from None
    elif draft.currency is not None:
        raise Invalid("currency given without an amount", field="currency")
    if draft.callback_url is not None:
        prefixes: list[str] = json.loads(agent.callback_prefixes)
        if not any(draft.callback_url.startswith(prefix) for prefix in prefixes):
            raise Invalid(
                "callback_url is not under a prefix registered for this agent", field="callback_url"
            )
    return category, amount, currency


def submit(
    rt: Runtime, *, agent: Agent, draft: DraftIn, key: str | None, base_url: str
) -> tuple[int, dict[str, Any]]:
    """Store a new draft (or replay the stored answer for a repeated Idempotency-Key)."""
    category, amount, currency = _validate(rt, agent, draft)
    findings = check_rules(
        rules=risk_rules(category), body=draft.body, context=draft.context, amount=amount, currency=currency
    )
    level = risk_level(findings)
    risk = {
        "level": level,
        "findings": [finding.to_dict() for finding in findings],
        "ai": {"status": "pending" if category.ai_review else "off", "note": ""},
    }
    fingerprint = request_fingerprint(draft)
    for attempt in range(3):
        try:
            with transaction(rt.engine) as session:
                result = _submit_in(
                    session, rt, agent, draft, category, amount, currency, risk, key, fingerprint, base_url
                )
            rt.wake_outbox()
            return result
        except IntegrityError:
            # A concurrent request with the same key committed first (PostgreSQL waits on the
            # unique index, then fails here): the next attempt finds its stored answer.
            if key is None or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _submit_in(
    session: Session,
    rt: Runtime,
    agent: Agent,
    draft: DraftIn,
    category: Category,
    amount: Decimal | None,
    currency: str | None,
    risk: dict[str, Any],
    key: str | None,
    fingerprint: str,
    base_url: str,
) -> tuple[int, dict[str, Any]]:
    now = rt.clock()
    if key is not None:
        stored = session.get(IdempotencyRecord, (agent.id, key))
        if stored is not None and stored.created_at > now - IDEMPOTENCY_RETENTION:
            if stored.request_hash != fingerprint:
                raise IdempotencyMismatch(
                    "Idempotency-Key reused with a different request", field="idempotency_key"
                )
            return stored.response_status, json.loads(stored.response_body)
        if stored is not None:
            session.delete(stored)
            session.flush()

    exponent = currency_exponent(category.currency)
    amount_minor = 0 if amount is None else policy.to_minor(amount, exponent)
    fresh = session.get(Agent, agent.id)
    if fresh is None:
        raise NotFound("agent removed")
    controls = queries.get_controls(session, ["pause:all", f"mode:{category.name}"])
    view = policy.ControlView(
        agent_paused=fresh.state == "paused",
        all_paused="pause:all" in controls,
        agent_offline=fresh.offline,
        category_manual=policy.is_manual(controls.get(f"mode:{category.name}"), now),
        caps=caps.usage(session, rt.config, category, now).check,
    )
    manual_reason = policy.route_new_draft(view, amount_minor)
    row = Draft(
        id=rt.new_id(),
        agent_id=agent.id,  # type: ignore[arg-type]
        category=category.name,
        status="manual" if manual_reason else "pending",
        reason=manual_reason,
        summary=draft.summary,
        body=draft.body,
        context=draft.context,
        amount_minor=None if amount is None else amount_minor,
        currency=currency if amount is not None else None,
        payload=json.dumps(draft.payload or {}),
        callback_url=draft.callback_url,
        requested_by=draft.requested_by,
        risk=json.dumps(risk),
        approvals_needed=policy.approvals_needed(
            amount=amount, two_person_above=category.two_person_above, high_risk=risk["level"] == "high"
        ),
        expires_at=now + category.expire_after,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        at=now,
        actor=f"agent:{agent.name}",
        action="draft.submitted",
        subject=row.id,
        after={
            "status": row.status,
            "reason": row.reason,
            "category": row.category,
            "amount_minor": row.amount_minor,
        },
    )
    # Slack being down delays the post, never loses it: this job retries for days, not minutes.
    queries.enqueue(session, "slack.render", {"draft_id": row.id, "post": True}, now=now, max_attempts=1000)
    if category.ai_review and row.status == "pending":
        queries.enqueue(session, "risk.ai_review", {"draft_id": row.id}, now=now, max_attempts=1)
    body: dict[str, Any] = {"id": row.id, "status": row.status, "url": f"{base_url}/v1/drafts/{row.id}"}
    if manual_reason:
        body["reason"] = manual_reason
    if key is not None:
        session.add(
            IdempotencyRecord(
                agent_id=agent.id,  # type: ignore[arg-type]
                key=key,
                request_hash=fingerprint,
                response_status=202,
                response_body=json.dumps(body),
                created_at=now,
            )
        )
    return 202, body


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
        "body": draft.body,
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
    with transaction(rt.engine) as session:
        return agent_view(session, own_draft(session, agent, draft_id))


def status_of(rt: Runtime, *, agent: Agent, draft_id: str) -> str:
    with transaction(rt.engine) as session:
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
    """The side effects of every draft state change: audit, Slack message refresh, agent callback."""
    audit.append(session, at=now, actor=actor, action=action, subject=draft.id, before=before, after=after)
    queries.enqueue(session, "slack.render", {"draft_id": draft.id}, now=now)
    if draft.callback_url:
        queries.enqueue(
            session,
            "callback.send",
            {"draft_id": draft.id, "event": action, "status": after.get("status", draft.status)},
            now=now,
        )


def cancel(rt: Runtime, *, agent: Agent, draft_id: str) -> dict[str, Any]:
    """Withdraw a pending draft."""
    with transaction(rt.engine) as session:
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
    with transaction(rt.engine) as session:
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
            queries.release_cap(
                session,
                scope=caps.scope(category.name),
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
