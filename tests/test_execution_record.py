"""An executor attempt that was sent but whose outcome was never recorded (the process died, or
the database failed right after the executor answered) may have taken effect: the next attempt
and a give-up treat it as unknown, so the draft ends in needs_reconciliation with its cap kept,
never `failed` with the cap released (both databases)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from bot import agents, decisions, intake, policy
from bot.outbox import NotAttempted, Worker
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.webhooks import DB_RETRY_SECONDS, WebhookJobs
from storage import queries
from storage.tables import OutboxJob
from tests.conftest import FrozenClock

REVIEWERS = frozenset({"U0ALICE", "U0BOB"})


def _approved_refund(rt: Runtime) -> str:
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    draft = DraftIn.model_validate(
        {
            "category": "refund",
            "summary": "Refund",
            "body": "We refunded the order to your original payment method.",
            "context": "Customer: please refund my order of $30.00.",
            "amount": "30.00",
        }
    )
    draft_id = str(intake.submit(rt, agent=agent, draft=draft, key=None, base_url="")[1]["id"])
    decisions.approve(
        rt,
        draft_id=draft_id,
        version=1,
        user="U0ALICE",
        reviewers=REVIEWERS,
        reviewer=policy.Reviewer("U0ALICE"),
    )
    return draft_id


def _state(rt: Runtime, draft_id: str) -> tuple[str, bool, bool, int]:
    with rt.engine.connect() as conn:
        status, ambiguous, in_flight = conn.execute(
            sa.text("SELECT status, execution_ambiguous, execution_in_flight FROM draft WHERE id = :id"),
            {"id": draft_id},
        ).one()
        used = conn.execute(
            sa.text("SELECT count_used FROM cap_usage WHERE scope = 'category:refund'")
        ).scalar_one()
    return str(status), bool(ambiguous), bool(in_flight), int(used)


def _job(draft_id: str) -> OutboxJob:
    return OutboxJob(id=1, kind="executor.call", payload=json.dumps({"draft_id": draft_id}), attempts=6)


def test_a_give_up_after_an_unrecorded_attempt_is_unknown_and_keeps_the_cap(rt: Runtime) -> None:
    draft_id = _approved_refund(rt)
    jobs = WebhookJobs(rt)
    assert jobs._begin(draft_id) is not None  # sent; the executor answered 2xx; the record failed
    assert _state(rt, draft_id) == ("approved", False, True, 1)
    asyncio.run(jobs.execute_gave_up(_job(draft_id), "database unavailable"))
    assert _state(rt, draft_id) == ("needs_reconciliation", False, False, 1)


def test_the_attempt_after_an_unrecorded_one_carries_its_doubt(rt: Runtime) -> None:
    draft_id = _approved_refund(rt)
    jobs = WebhookJobs(rt)
    assert jobs._begin(draft_id) is not None  # never recorded
    assert jobs._begin(draft_id) is not None  # the retry: the first may have acted
    assert _state(rt, draft_id) == ("approved", True, True, 1)
    # This attempt is refused outright; that says nothing about the first one.
    jobs._finish(draft_id, ok=False, error="HTTP 422: unknown order")
    assert _state(rt, draft_id)[0::3] == ("needs_reconciliation", 1)


def test_a_refusal_of_a_recorded_first_attempt_fails_and_releases_the_cap(rt: Runtime) -> None:
    draft_id = _approved_refund(rt)
    jobs = WebhookJobs(rt)
    assert jobs._begin(draft_id) is not None
    jobs._note(draft_id, "HTTP 503: busy", ambiguous=False)  # answered: recorded, not in flight
    assert _state(rt, draft_id) == ("approved", False, False, 1)
    assert jobs._begin(draft_id) is not None
    jobs._finish(draft_id, ok=False, error="HTTP 422: unknown order")
    assert _state(rt, draft_id) == ("failed", False, False, 0)


def _executor_job(rt: Runtime) -> tuple[int, datetime]:
    """(attempts, run_after) of the one executor job."""
    with rt.engine.connect() as conn:
        row = conn.execute(
            sa.select(queries.job_t.c.attempts, queries.job_t.c.run_after).where(
                queries.job_t.c.kind == "executor.call"
            )
        ).one()
    return int(row[0]), row[1]


async def test_an_attempt_the_database_kept_from_being_sent_is_not_counted(
    rt: Runtime, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that fails now and then (a dropped connection in the attempt's first
    transaction) cannot use up the executor attempts: nothing was sent, so nothing is counted."""
    draft_id = _approved_refund(rt)
    with rt.engine.begin() as conn:  # only the executor's job is delivered here
        conn.execute(sa.delete(queries.job_t).where(queries.job_t.c.kind != "executor.call"))
    jobs = WebhookJobs(rt)
    worker = Worker(rt=rt, handlers=jobs.handlers(), give_up=jobs.give_up(), worker_id="w1")
    real = queries.get_controls

    def dropped(*args: object, **kwargs: object) -> object:
        raise OperationalError("SELECT control", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(queries, "get_controls", dropped)
    for _ in range(rt.executor_attempts + 2):  # more failures than the job has attempts
        assert await worker.run_once() == 1
        attempts, run_after = _executor_job(rt)
        assert attempts == 0 and run_after == clock() + timedelta(seconds=DB_RETRY_SECONDS)
        assert await worker.run_once() == 0  # not due before then
        clock.advance(seconds=DB_RETRY_SECONDS)
    assert _state(rt, draft_id) == ("approved", False, False, 1)  # still to run, nothing in doubt
    monkeypatch.setattr(queries, "get_controls", real)
    assert jobs._begin(draft_id) is not None  # the database is back: the first real attempt


async def test_an_execution_paused_after_its_claim_waits_without_using_an_attempt(rt: Runtime) -> None:
    draft_id = _approved_refund(rt)
    with rt.engine.begin() as conn:
        conn.execute(sa.text("UPDATE agent SET state = 'paused'"))
    with pytest.raises(NotAttempted):
        await WebhookJobs(rt).execute(_job(draft_id))
    assert _state(rt, draft_id) == ("approved", False, False, 1)
