"""Storing one batch of checked submissions in the caller's transaction: stored idempotent answers
replayed, the rest inserted with one statement per table."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic_core import PydanticUndefined
from sqlmodel import Session

from bot import audit, caps, policy
from bot.errors import CountersignError, IdempotencyMismatch, Unauthorized
from bot.intake.checks import Prepared
from bot.runtime import Runtime
from bot.settings import currency_exponent
from storage import queries
from storage.rawsql import RawCursor, marks
from storage.tables import Draft

IDEMPOTENCY_RETENTION = timedelta(hours=24)


ANSWER_COLUMNS = ("agent_id", "key", "request_hash", "response_status", "response_body", "created_at")


Result = tuple[int, dict[str, Any]]


@dataclass
class _Controls:
    agents: dict[int, tuple[str, bool]]  # id -> (state, offline)
    switches: dict[str, dict[str, Any]]
    usage: dict[str, tuple[int, int]]  # scope -> (count, amount minor), today
    day: str


def _read_controls(db: RawCursor, items: list[Prepared], day: str) -> _Controls:
    names = sorted({item.category.name for item in items})
    scopes = sorted({caps.scope(n) for n in names} | {caps.agent_scope(item.agent_name) for item in items})
    ids = sorted({item.agent_id for item in items})
    keys = ["pause:all", *(f"mode:{n}" for n in names), *(f"cap:{n}" for n in names)]
    agents = {
        row[0]: (row[1], bool(row[2]))
        for row in db.rows(f"SELECT id, state, offline FROM agent WHERE id IN ({marks(len(ids))})", ids)
    }
    usage = {
        row[0]: (row[1], row[2])
        for row in db.rows(
            "SELECT scope, count_used, amount_used_minor FROM cap_usage"
            f" WHERE day = ? AND scope IN ({marks(len(scopes))})",
            [day, *scopes],
        )
    }
    switches = {
        row[0]: json.loads(row[1])
        for row in db.rows(
            f'SELECT "key", value FROM control_state WHERE "key" IN ({marks(len(keys))})', keys
        )
    }
    return _Controls(agents=agents, switches=switches, usage=usage, day=day)


@dataclass
class _Rows:
    drafts: list[dict[str, Any]] = field(default_factory=list)
    events: list[audit.Event] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)


def store_batch(session: Session, rt: Runtime, items: list[Prepared]) -> list[Result | CountersignError]:
    now = rt.clock()
    db = RawCursor.of(session)
    results: list[Result | CountersignError | None] = [None] * len(items)
    first_of_key: dict[tuple[int, str], int] = {}
    revoked = _revoked_tokens(db, items)
    for index, item in enumerate(items):
        if item.token_hash in revoked:
            results[index] = Unauthorized("unknown or revoked agent token")
    stored = _stored_answers(db, [item for i, item in enumerate(items) if results[i] is None], now)
    for index, item in enumerate(items):
        if item.key is None or results[index] is not None:
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
    controls = _read_controls(db, [items[i] for i in new], day) if new else None
    rows = _Rows()
    for index in new:
        assert controls is not None
        results[index] = _new_draft(rt, items[index], controls, rows, now)
    if rows.drafts:
        columns = _draft_columns()
        db.insert("draft", columns, [[row[c] for c in columns] for row in rows.drafts])
        audit.append_many(session, rows.events)
        queries.enqueue_many(session, rows.jobs)
    db.insert("idempotency_record", ANSWER_COLUMNS, [[row[c] for c in ANSWER_COLUMNS] for row in rows.keys])
    for index, item in enumerate(items):
        if results[index] is None and item.key is not None:
            first = results[first_of_key[(item.agent_id, item.key)]]
            assert isinstance(first, tuple)
            results[index] = _replay(item, items[first_of_key[(item.agent_id, item.key)]].fingerprint, *first)
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _revoked_tokens(db: RawCursor, items: list[Prepared]) -> set[str]:
    """The token hashes (of items authenticated from the cache) that are no longer live: rotated
    or removed since the cache saw them."""
    hashes = sorted({item.token_hash for item in items if item.token_hash is not None})
    if not hashes:
        return set()
    live = db.rows(
        f"SELECT token_hash FROM agent_token WHERE token_hash IN ({marks(len(hashes))}) AND revoked_at IS NULL",
        hashes,
    )
    return set(hashes) - {row[0] for row in live}


def _stored_answers(
    db: RawCursor, items: list[Prepared], now: datetime
) -> dict[tuple[int, str], tuple[str, int, dict[str, Any]]]:
    pairs = {(item.agent_id, item.key) for item in items if item.key is not None}
    if not pairs:
        return {}
    # Two plain IN lists (not a tuple IN), so the (agent_id, key) primary key serves the lookup;
    # the exact pairs are picked out here.
    agents, keys = sorted({agent for agent, _ in pairs}), sorted({key for _, key in pairs})
    rows = db.rows(
        'SELECT agent_id, "key", request_hash, response_status, response_body, created_at'
        f' FROM idempotency_record WHERE agent_id IN ({marks(len(agents))}) AND "key" IN ({marks(len(keys))})',
        [*agents, *keys],
    )
    oldest = db.time(now - IDEMPOTENCY_RETENTION)  # compared in stored form: both drivers order it
    answers: dict[tuple[int, str], tuple[str, int, dict[str, Any]]] = {}
    expired = []
    for agent_id, key, request_hash, status, body, created_at in rows:
        if (agent_id, key) not in pairs:
            continue
        if created_at > oldest:
            answers[(agent_id, key)] = (request_hash, status, json.loads(body))
        else:
            expired.append((agent_id, key))
    db.run_many('DELETE FROM idempotency_record WHERE agent_id = ? AND "key" = ?', expired)
    return answers


def _replay(item: Prepared, fingerprint: str, status: int, body: dict[str, Any]) -> Result | CountersignError:
    if fingerprint != item.fingerprint:
        return IdempotencyMismatch("Idempotency-Key reused with a different request", field="idempotency_key")
    return status, body


@functools.cache
def _draft_columns() -> tuple[str, ...]:
    return tuple(column.name for column in Draft.__table__.columns)  # type: ignore[attr-defined]


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
    rows.jobs.append(queries.job("slack.render", {"draft_id": draft_id, "post": True}, now=now))
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
