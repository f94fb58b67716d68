"""An executor attempt that was sent but whose outcome was never recorded (the process died, or
the database failed right after the executor answered) may have taken effect: the next attempt
and a give-up treat it as unknown, so the draft ends in needs_reconciliation with its cap kept,
never `failed` with the cap released (both databases)."""

from __future__ import annotations

import asyncio
import json

import sqlalchemy as sa

from bot import agents, decisions, intake, policy
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.webhooks import WebhookJobs
from storage.tables import OutboxJob

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
