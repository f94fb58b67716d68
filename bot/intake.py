"""Intake: check an agent's submission, then store many at once (group commit).

Submissions that arrive while a batch is being written wait for the next one, so under load
one transaction (one fsync, one audit-chain lock) stores dozens of drafts; alone, a draft
is stored at once. Every draft still gets its own audit event, outbox jobs and stored
idempotent response, in the same transaction as the draft itself.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from pydantic_core import PydanticUndefined
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot import audit, caps, crashpoints, netguard, policy
from bot.errors import CountersignError, Forbidden, IdempotencyMismatch, Invalid
from bot.risk import RiskRules, check_rules, risk_level
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.settings import Category, currency_exponent
from storage import queries
from storage.db import transaction
from storage.tables import Agent, CapUsage, Draft, IdempotencyRecord

IDEMPOTENCY_RETENTION = timedelta(hours=24)
MAX_BATCH = 256

agent_t = Agent.__table__  # type: ignore[attr-defined]
draft_t = Draft.__table__  # type: ignore[attr-defined]
idem_t = IdempotencyRecord.__table__  # type: ignore[attr-defined]
cap_t = CapUsage.__table__  # type: ignore[attr-defined]

Result = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Prepared:
    """A submission that passed every check that needs no database."""

    agent_id: int
    agent_name: str
    draft: DraftIn
    category: Category
    amount: Decimal | None
    currency: str | None
    risk: dict[str, Any]
    key: str | None
    fingerprint: str
    base_url: str


def request_fingerprint(draft: DraftIn) -> str:
    """Hash of the request as parsed, so the same request spelled differently is still the same."""
    fields = draft.model_dump(exclude={"idempotency_key"}, exclude_none=True)
    return hashlib.sha256(audit.canonical(fields).encode()).hexdigest()


def risk_rules(category: Category) -> RiskRules:
    return RiskRules(
        money=category.money,
        max_amount=category.max_amount,
        currency=category.currency,
        allowed_link_domains=category.allowed_link_domains,
        forbidden_phrases=category.forbidden_phrases,
    )


def agent_categories(agent: Agent) -> list[str]:
    return [name for name in agent.categories.split(",") if name]


def prepare(rt: Runtime, *, agent: Agent, draft: DraftIn, key: str | None, base_url: str) -> Prepared:
    """Validate against the config and the agent's registration; run the risk rules."""
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
        # The host comes from the prefix; one registered before the SSRF checks may still be refused.
        try:
            netguard.check_url(draft.callback_url)
        except ValueError as exc:
            raise Invalid(f"callback_url refused: {exc}", field="callback_url") from None
    findings = check_rules(
        rules=risk_rules(category), body=draft.body, context=draft.context, amount=amount, currency=currency
    )
    risk = {
        "level": risk_level(findings),
        "findings": [finding.to_dict() for finding in findings],
        "ai": {"status": "pending" if category.ai_review else "off", "note": ""},
    }
    return Prepared(
        agent_id=agent.id,  # type: ignore[arg-type]
        agent_name=agent.name,
        draft=draft,
        category=category,
        amount=amount,
        currency=currency,
        risk=risk,
        key=key,
        fingerprint=request_fingerprint(draft),
        base_url=base_url,
    )


def write_batch(rt: Runtime, items: list[Prepared]) -> list[Result | CountersignError]:
    """Store submissions in one transaction; one answer (or error) per item, in order."""
    for attempt in range(3):
        try:
            with transaction(rt.engine) as session:
                results = _store(session, rt, items)
            crashpoints.reached("after_draft_commit")
            rt.wake_outbox()
            return results
        except IntegrityError:
            # Another process stored the same Idempotency-Key first (PostgreSQL waits on the unique
            # index, then fails here). Alone, the retry finds its stored answer; in a batch, split up.
            if len(items) > 1:
                return [write_batch(rt, [item])[0] for item in items]
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def submit(rt: Runtime, *, agent: Agent, draft: DraftIn, key: str | None, base_url: str) -> Result:
    """Check and store one submission (the CLI and tests; the server batches)."""
    result = write_batch(rt, [prepare(rt, agent=agent, draft=draft, key=key, base_url=base_url)])[0]
    if isinstance(result, CountersignError):
        raise result
    return result


@dataclass
class _Controls:
    agents: dict[int, tuple[str, bool]]  # id -> (state, offline)
    switches: dict[str, dict[str, Any]]
    usage: dict[str, tuple[int, int]]  # scope -> (count, amount minor), today
    day: str


@dataclass(frozen=True)
class _Statements:
    """The hot path's statements, built once: constructing and caching SQL per batch costs more
    than running it. Executed on the Core connection under the session's transaction."""

    agents: sa.Select[Any]
    usage: sa.Select[Any]
    answers: sa.Select[Any]
    forget: sa.Delete
    insert_draft: sa.Insert
    insert_answer: sa.Insert


@functools.cache
def _statements() -> _Statements:
    def expanding(name: str) -> sa.BindParameter[Any]:
        return sa.bindparam(name, expanding=True)

    return _Statements(
        agents=sa.select(agent_t.c.id, agent_t.c.state, agent_t.c.offline).where(
            agent_t.c.id.in_(expanding("ids"))
        ),
        usage=sa.select(cap_t.c.scope, cap_t.c.count_used, cap_t.c.amount_used_minor).where(
            cap_t.c.scope.in_(expanding("scopes")), cap_t.c.day == sa.bindparam("day")
        ),
        answers=sa.select(idem_t).where(idem_t.c.key.in_(expanding("keys"))),
        forget=sa.delete(idem_t).where(
            idem_t.c.agent_id == sa.bindparam("agent"), idem_t.c.key == sa.bindparam("old_key")
        ),
        insert_draft=sa.insert(draft_t),
        insert_answer=sa.insert(idem_t),
    )


def _read_controls(session: Session, rt: Runtime, items: list[Prepared], day: str) -> _Controls:
    conn, sql = session.connection(), _statements()
    names = {item.category.name for item in items}
    scopes = {caps.scope(n) for n in names} | {caps.agent_scope(item.agent_name) for item in items}
    agents = {
        row[0]: (row[1], bool(row[2]))
        for row in conn.execute(sql.agents, {"ids": list({item.agent_id for item in items})})
    }
    keys = ["pause:all", *(f"mode:{n}" for n in names), *(f"cap:{n}" for n in names)]
    usage = {
        row[0]: (row[1], row[2]) for row in conn.execute(sql.usage, {"scopes": list(scopes), "day": day})
    }
    return _Controls(agents=agents, switches=queries.get_controls(session, keys), usage=usage, day=day)


@dataclass
class _Rows:
    drafts: list[dict[str, Any]] = field(default_factory=list)
    events: list[audit.Event] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)


def _store(session: Session, rt: Runtime, items: list[Prepared]) -> list[Result | CountersignError]:
    now = rt.clock()
    results: list[Result | CountersignError | None] = [None] * len(items)
    first_of_key: dict[tuple[int, str], int] = {}
    stored = _stored_answers(session, items, now)
    for index, item in enumerate(items):
        if item.key is None:
            continue
        pair = (item.agent_id, item.key)
        answer = stored.get(pair)
        if answer is not None:
            results[index] = _replay(item, *answer)
        elif pair not in first_of_key:
            first_of_key[pair] = index
    new = [
        i
        for i, item in enumerate(items)
        if results[i] is None and (item.key is None or first_of_key.get((item.agent_id, item.key)) == i)
    ]
    day = policy.cap_day(now, rt.config.timezone)
    controls = _read_controls(session, rt, [items[i] for i in new], day) if new else None
    rows = _Rows()
    for index in new:
        assert controls is not None
        results[index] = _new_draft(rt, items[index], controls, rows, now)
    conn, sql = session.connection(), _statements()
    if rows.drafts:
        conn.execute(sql.insert_draft, rows.drafts)
        audit.append_many(session, rows.events)
        queries.enqueue_many(session, rows.jobs)
    if rows.keys:
        conn.execute(sql.insert_answer, rows.keys)
    for index, item in enumerate(items):
        if results[index] is None and item.key is not None:
            first = results[first_of_key[(item.agent_id, item.key)]]
            assert isinstance(first, tuple)
            results[index] = _replay(item, items[first_of_key[(item.agent_id, item.key)]].fingerprint, *first)
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _stored_answers(
    session: Session, items: list[Prepared], now: datetime
) -> dict[tuple[int, str], tuple[str, int, dict[str, Any]]]:
    pairs = {(item.agent_id, item.key) for item in items if item.key is not None}
    if not pairs:
        return {}
    conn, sql = session.connection(), _statements()
    # By key alone (one plain IN list), then by agent here: keys are scoped per agent.
    rows = conn.execute(sql.answers, {"keys": list({key for _, key in pairs})}).all()
    answers: dict[tuple[int, str], tuple[str, int, dict[str, Any]]] = {}
    expired = []
    for row in rows:
        if (row.agent_id, row.key) not in pairs:
            continue
        if row.created_at > now - IDEMPOTENCY_RETENTION:
            answers[(row.agent_id, row.key)] = (
                row.request_hash,
                row.response_status,
                json.loads(row.response_body),
            )
        else:
            expired.append((row.agent_id, row.key))
    if expired:
        conn.execute(sql.forget, [{"agent": agent_id, "old_key": key} for agent_id, key in expired])
    return answers


def _replay(item: Prepared, fingerprint: str, status: int, body: dict[str, Any]) -> Result | CountersignError:
    if fingerprint != item.fingerprint:
        return IdempotencyMismatch("Idempotency-Key reused with a different request", field="idempotency_key")
    return status, body


@functools.cache
def _draft_defaults() -> dict[str, Any]:
    """Every draft column's default, so a Core insert stores what the model would."""
    return {
        name: info.default
        for name, info in Draft.model_fields.items()
        if not info.is_required() and info.default is not PydanticUndefined
    }


def _new_draft(rt: Runtime, item: Prepared, controls: _Controls, rows: _Rows, now: datetime) -> Result:
    category = item.category
    exponent = currency_exponent(category.currency)
    amount_minor = 0 if item.amount is None else policy.to_minor(item.amount, exponent)
    state, offline = controls.agents.get(item.agent_id, ("paused", False))
    count_cap, amount_cap = caps.limits_from(
        category, controls.switches.get(f"cap:{category.name}"), controls.day
    )
    count_used, amount_used = controls.usage.get(caps.scope(category.name), (0, 0))
    tuning = rt.config.agent_policy(item.agent_name)
    agent_count_used, agent_amount_used = controls.usage.get(caps.agent_scope(item.agent_name), (0, 0))
    view = policy.ControlView(
        agent_paused=state == "paused",
        all_paused="pause:all" in controls.switches,
        agent_offline=offline,
        category_manual=policy.is_manual(controls.switches.get(f"mode:{category.name}"), now),
        caps=policy.CapCheck(count_cap, amount_cap, count_used, amount_used),
        agent_caps=policy.CapCheck(
            tuning.daily_count_cap,
            None if tuning.daily_amount_cap is None else policy.to_minor(tuning.daily_amount_cap, exponent),
            agent_count_used,
            agent_amount_used,
        ),
    )
    manual_reason = policy.route_new_draft(view, amount_minor)
    draft = item.draft
    draft_id = rt.new_id()
    status = "manual" if manual_reason else "pending"
    stored_amount = None if item.amount is None else amount_minor
    rows.drafts.append(
        _draft_defaults()
        | {
            "id": draft_id,
            "agent_id": item.agent_id,
            "category": category.name,
            "status": status,
            "reason": manual_reason,
            "summary": draft.summary,
            "body": draft.body,
            "context": draft.context,
            "amount_minor": stored_amount,
            "currency": item.currency if item.amount is not None else None,
            "payload": json.dumps(draft.payload or {}),
            "callback_url": draft.callback_url,
            "requested_by": draft.requested_by,
            "risk": json.dumps(item.risk),
            "approvals_needed": policy.approvals_needed(
                amount=item.amount,
                two_person_above=category.two_person_above,
                high_risk=item.risk["level"] == "high",
            ),
            "expires_at": now + category.expire_after,
            "created_at": now,
            "updated_at": now,
        }
    )
    rows.events.append(
        audit.Event(
            at=now,
            actor=f"agent:{item.agent_name}",
            action="draft.submitted",
            subject=draft_id,
            after={
                "status": status,
                "reason": manual_reason,
                "category": category.name,
                "amount_minor": stored_amount,
            },
        )
    )
    # Slack being down delays the post, never loses it: this job retries for days, not minutes.
    rows.jobs.append(
        queries.job("slack.render", {"draft_id": draft_id, "post": True}, now=now, max_attempts=1000)
    )
    if category.ai_review and status == "pending":
        rows.jobs.append(queries.job("risk.ai_review", {"draft_id": draft_id}, now=now, max_attempts=3))
    body: dict[str, Any] = {"id": draft_id, "status": status, "url": f"{item.base_url}/v1/drafts/{draft_id}"}
    if manual_reason:
        body["reason"] = manual_reason
    if item.key is not None:
        rows.keys.append(
            {
                "agent_id": item.agent_id,
                "key": item.key,
                "request_hash": item.fingerprint,
                "response_status": 202,
                "response_body": json.dumps(body),
                "created_at": now,
            }
        )
    return 202, body


class IntakeWriter:
    """Collects concurrent submissions and writes each gathered batch in one transaction."""

    def __init__(self, rt: Runtime, *, max_batch: int = MAX_BATCH) -> None:
        self.rt = rt
        self.max_batch = max_batch
        self._pending: list[tuple[Prepared, asyncio.Future[Result]]] = []
        self._kick = asyncio.Event()

    async def submit(self, item: Prepared) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._kick.set()
        return await future

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                try:
                    results = await asyncio.to_thread(write_batch, self.rt, [item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, CountersignError):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
