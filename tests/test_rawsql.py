"""Intake's hot path writes through the driver (storage/rawsql.py): what it stores must read back
through the ORM exactly as if the ORM had written it, and driver errors must surface as
SQLAlchemy's, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from contextlib import nullcontext
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from bot import agents, audit, intake
from bot.runtime import Runtime
from bot.schemas import DraftIn
from storage.db import transaction
from storage.rawsql import RawCursor
from storage.tables import AuditEvent, Draft, IdempotencyRecord, OutboxJob
from tests.conftest import FrozenClock


def test_rows_written_by_the_driver_read_back_through_the_orm(rt: Runtime, clock: FrozenClock) -> None:
    clock.advance(microseconds=123456)  # microseconds must survive the stored form
    registered = agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    row = agents.authenticate(rt, registered.token)
    draft = DraftIn(
        category="refund",
        summary="Refund order 1042",
        body="We'll refund $40.00 to your card.",
        context="I was charged twice for order 1042, please refund me.",
        amount="40.00",
        payload={"order": "1042", "note": "naïve “quotes” ✓"},
    )
    status, body = intake.submit(rt, agent=row, draft=draft, key="key-1", base_url="http://x")
    assert status == 202 and body["status"] == "pending"
    now = clock()
    with transaction(rt.engine, write=False) as session:
        stored = session.get(Draft, body["id"])
        assert stored is not None
        assert stored.created_at == now and stored.updated_at == now
        assert stored.created_at.tzinfo is not None
        assert stored.expires_at == now + timedelta(hours=4)
        assert stored.amount_minor == 4000 and stored.currency == "USD"
        assert stored.edited is False and stored.execution_ambiguous is False and stored.version == 1
        assert json.loads(stored.payload) == {"order": "1042", "note": "naïve “quotes” ✓"}
        answer = session.get(IdempotencyRecord, (row.id, "key-1"))
        assert answer is not None and answer.created_at == now and answer.response_status == 202
        jobs = session.exec(select(OutboxJob).where(OutboxJob.kind == "slack.render")).all()
        assert [(job.run_after, job.created_at, job.status) for job in jobs] == [(now, now, "queued")]
        event = session.exec(select(AuditEvent).where(AuditEvent.subject == body["id"])).one()
        assert event.at == now and event.action == "draft.submitted"
        # Time comparisons in SQL see the driver's rows as the ORM's: ordering and ranges work.
        later = session.exec(select(Draft.id).where(Draft.created_at > now - timedelta(microseconds=1))).all()
        assert later == [body["id"]]
        assert session.exec(select(Draft.id).where(Draft.created_at > now)).all() == []
    assert audit.verify(rt.engine).ok
    # The same key again replays the stored answer (read back through the driver).
    assert intake.submit(rt, agent=row, draft=draft, key="key-1", base_url="http://x") == (status, body)


def test_driver_errors_surface_as_sqlalchemy_errors(rt: Runtime, clock: FrozenClock) -> None:
    with transaction(rt.engine, audited=True) as session:
        audit.append(session, at=clock(), actor="test", action="probe", subject="s")
    with pytest.raises(IntegrityError), transaction(rt.engine) as session:
        db = RawCursor.of(session)
        db.run(
            'INSERT INTO "audit_event" ("seq", "at", "actor", "action", "subject", "before", "after",'
            ' "outcome", "prev_hash", "hash") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
            (1, db.time(clock()), "x", "x", "x", "null", "null", "ok", "0", "h"),
        )
    # The failed transaction was rolled back; the table still holds the one event.
    with transaction(rt.engine, write=False) as session:
        assert session.connection().execute(sa.text("SELECT count(*) FROM audit_event")).scalar_one() == 1


def test_one_cursor_per_transaction(rt: Runtime) -> None:
    with transaction(rt.engine) as session:
        first = RawCursor.of(session)
        assert RawCursor.of(session) is first
    with transaction(rt.engine) as session:
        assert RawCursor.of(session) is not first


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_a_transactions_cursor_is_closed_as_it_ends_in_its_own_thread(rt: Runtime, ending: str) -> None:
    # Kept alive past its transaction (by an exception's traceback, say), a cursor would be freed
    # in whichever thread drops the last reference, while another thread uses its connection.
    kept: list[RawCursor] = []
    with (
        pytest.raises(RuntimeError) if ending == "rollback" else nullcontext(),
        transaction(rt.engine) as session,
    ):
        kept.append(RawCursor.of(session))
        kept[0].rows("SELECT 1")
        if ending == "rollback":
            raise RuntimeError("the transaction fails")
    assert "countersign.raw_cursor" not in session.info
    with pytest.raises(Exception, match=r"(?i)closed"):
        kept[0].rows("SELECT 1")


def test_a_batch_of_rows_reads_back_exactly(rt: Runtime, clock: FrozenClock) -> None:
    """Several rows per table go in one statement (COPY on PostgreSQL): characters that COPY's
    text format escapes, NULLs and times must come back as they went in."""
    clock.advance(microseconds=654321)
    registered = agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    row = agents.authenticate(rt, registered.token)
    tricky = "tab\there\nnew line \\N back\\slash \\. end\r\n naïve “quotes” ✓ 𝔘"
    drafts = [
        DraftIn(category="refund", summary=f"Draft {i} {tricky}", body=f"Body {i}: {tricky}", context=None)
        for i in range(5)
    ]
    items = [
        intake.prepare(rt, agent=row, draft=draft, key=f"batch-{i}" if i % 2 else None, base_url="http://x")
        for i, draft in enumerate(drafts)
    ]
    results = intake.write_batch(rt, items)
    assert [result[0] for result in results] == [202] * 5  # type: ignore[index]
    now = clock()
    with transaction(rt.engine, write=False) as session:
        for (_, body), draft in zip(results, drafts, strict=True):  # type: ignore[misc]
            stored = session.get(Draft, body["id"])
            assert stored is not None
            assert (stored.summary, stored.body, stored.context) == (draft.summary, draft.body, None)
            assert stored.amount_minor is None and stored.created_at == now and stored.edited is False
        keys = session.exec(select(IdempotencyRecord.key).order_by(IdempotencyRecord.key)).all()
        assert keys == ["batch-1", "batch-3"]
        jobs = session.exec(select(OutboxJob).where(OutboxJob.kind == "slack.render")).all()
        assert len(jobs) == 5 and all(job.run_after == now for job in jobs)
    assert audit.verify(rt.engine).ok


def test_a_batch_that_breaks_a_constraint_changes_nothing(rt: Runtime, clock: FrozenClock) -> None:
    events = [audit.Event(at=clock(), actor="test", action="probe", subject=f"s{i}") for i in range(3)]
    with transaction(rt.engine, audited=True) as session:
        audit.append_many(session, events)
    columns = ("seq", "at", "actor", "action", "subject", "before", "after", "outcome", "prev_hash", "hash")
    with pytest.raises(IntegrityError), transaction(rt.engine) as session:
        db = RawCursor.of(session)
        rows = [(seq, clock(), "x", "x", "x", "null", "null", "ok", "0", "h") for seq in (9, 2)]
        db.insert("audit_event", columns, rows)
    with transaction(rt.engine, write=False) as session:
        assert session.connection().execute(sa.text("SELECT count(*) FROM audit_event")).scalar_one() == 3
    assert audit.verify(rt.engine).ok
