from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from bot.webhooks import retry_after
from handlers import ids
from tests.harness import Harness, blocks_text, eventually, harness

DELIVERIES = "countersign_delivery_attempts_total"


@pytest.fixture
async def h(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(db_url, tmp_path) as value:
        yield value


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_permanent_4xx_is_never_retried(h: Harness, status: int) -> None:
    h.executor.script(status)
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    failed = await h.status(created["id"], "failed")
    assert str(status) in failed["execution"]["last_error"]
    assert len(h.executor.requests) == 1
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert me["categories"]["refund"]["amount_used"] == "0.00"  # the failure released the reservation
    # A refusal is a failed delivery, in the outbox and in /metrics, not a delivered one.
    assert await eventually(lambda: h.jobs("executor.call") == [("dead", 1)])
    values = await h.metrics()
    assert values[(DELIVERIES, (("outcome", "permanent_failure"), ("target", "executor")))] == 1
    assert (DELIVERIES, (("outcome", "delivered"), ("target", "executor"))) not in values
    failed = await h.draft(created["id"])
    assert failed["status"] == "failed" and failed["execution"]["status"] == "failed"


async def test_retry_after_as_an_http_date_is_honoured(h: Harness) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    h.executor.script((503, {"Retry-After": later}))
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")
    assert len(h.executor.requests) == 2


async def test_a_2xx_whose_body_is_not_text_is_executed_once(h: Harness) -> None:
    h.executor.script((200, {"Content-Type": "text/plain; charset=utf-8"}, b"\xff\xfe" * 10))
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    executed = await h.status(created["id"], "executed")
    assert executed["execution"]["attempts"] == 1
    assert len(h.executor.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_a_callback_refused_with_a_permanent_4xx_is_not_retried(h: Harness, status: int) -> None:
    h.callbacks.script(*[status] * 10)
    created = await h.submit(callback_url=h.callbacks.url + "/hook")
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")

    # One callback per status change (approved, executed), each sent once and given up at once.
    def given_up() -> list[tuple[str, int]] | None:
        jobs = h.jobs("callback.send")
        return jobs if len(jobs) == 2 and all(status == "dead" for status, _ in jobs) else None

    assert [attempts for _, attempts in await eventually(given_up)] == [1, 1]
    assert len(h.callbacks.requests) == 2


def test_retry_after_is_capped_at_an_hour() -> None:
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    assert retry_after("999999999999", now) == 3600.0
    assert retry_after(format_datetime(now + timedelta(days=400), usegmt=True), now) == 3600.0


def test_retry_after_parses_seconds_and_dates() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert retry_after("7", now) == 7.0
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after("soon", now) is None and retry_after(None, now) is None


async def test_a_burst_of_5xx_is_retried_with_the_same_key(h: Harness) -> None:
    h.executor.script(500, 502)
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")
    assert [r.headers["Idempotency-Key"] for r in h.executor.requests] == [created["id"]] * 3


async def test_consecutive_executor_failures_switch_the_category_to_manual(h: Harness) -> None:
    h.executor.script(*([400] * 5))
    for n in range(5):
        created = await h.submit(summary=f"fail {n}")
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        await h.status(created["id"], "failed")
    await eventually(lambda: any("failed 5 times in a row" in a for a in h.alerts()))
    after = await h.submit(summary="after")
    assert after["status"] == "manual" and after["reason"] == "category_manual"
    assert "back in review mode" in await h.command("U0ADMIN", "review refund")
    assert (await h.submit(summary="resumed"))["status"] == "pending"


async def test_a_draft_whose_retries_trip_the_breaker_waits_for_review_and_its_card_says_why(
    db_url: str, tmp_path: Path
) -> None:
    # Six attempts per draft (the server's default), five consecutive failures trip the breaker:
    # the sixth is held (not given up) while the category is manual, and runs once an admin
    # returns it to review.
    async with harness(db_url, tmp_path, executor_attempts=6) as h:
        h.executor.script(*([503] * 5), 200)
        created = await h.submit()
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        await eventually(lambda: any("failed 5 times in a row" in a for a in h.alerts()))
        message = await h.posted(created["id"])

        def card() -> str | None:
            text = blocks_text(h.slack.message(message["channel"], message["ts"]))
            return text if "after 5 attempt(s)" in text else None

        shown = await eventually(card)
        assert "Execution: pending after 5 attempt(s) — HTTP 503" in shown
        assert (
            "this approved action is held, not carried out, until an admin runs `/agent review refund`"
            in shown
        )
        assert (await h.draft(created["id"]))["status"] == "approved" and len(h.executor.requests) == 5
        assert "back in review mode" in await h.command("U0ADMIN", "review refund")
        executed = await h.status(created["id"], "executed")
        assert executed["execution"]["attempts"] == 6 and len(h.executor.effects) == 1


async def test_a_success_resets_the_failure_count(h: Harness) -> None:
    h.executor.script(400, 400, 400, 400, 200, 400)
    for n in range(6):
        created = await h.submit(summary=f"mixed {n}")
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        await eventually(
            lambda created=created: (  # type: ignore[misc]  # default-arg lambda: python/mypy#15459
                h.executor.requests and h.executor.requests[-1].json["draft_id"] == created["id"]
            )
        )
        await h.status(created["id"], "executed" if n == 4 else "failed")
    assert not any("in a row" in a for a in h.alerts())
    assert (await h.submit(summary="still review"))["status"] == "pending"


@pytest.mark.parametrize("answer", [400, 422])
async def test_a_refusal_after_an_unanswered_attempt_leaves_the_outcome_unknown(
    h: Harness, answer: int
) -> None:
    # The first request reached the executor (its effect happened), then the connection dropped;
    # the retry is refused. That refusal says nothing about the first attempt: not "failed".
    h.executor.script("reset", answer)
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    view = await h.status(created["id"], "needs_reconciliation")
    assert len(h.executor.effects) == 1 and len(h.executor.requests) == 2
    assert view["execution"]["status"] == "needs_reconciliation"
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert me["categories"]["refund"]["amount_used"] == "30.00"  # the reservation stays


async def test_409_while_the_same_key_is_in_flight_is_waited_out(h: Harness) -> None:
    h.executor.script("reset", 409)
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")
    assert len(h.executor.effects) == 1 and len(h.executor.requests) == 3


async def test_409_to_the_last_attempt_is_an_unknown_outcome_not_a_failure(h: Harness) -> None:
    # The executor kept answering "still processing that key": the earlier request may yet act.
    h.executor.script(409, 409, 409)
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "needs_reconciliation")
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert me["categories"]["refund"]["amount_used"] == "30.00"  # the reservation stays
    with h.rt.engine.connect() as conn:  # a busy executor is not a failing one: no breaker count
        failures = conn.exec_driver_sql(
            "SELECT value FROM control_state WHERE \"key\" = 'executor_failures:refund'"
        ).scalar()
    assert failures is None or '"count": 0' in failures or '"count":0' in failures, failures
