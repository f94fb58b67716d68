from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from countersign_client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    Invalid,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    Unreachable,
)

from handlers.agent_api import LIMITER
from tests.client.conftest import approve, edit, in_thread, reject
from tests.harness import Harness
from tests.processes import free_port

REPLY: dict[str, Any] = {
    "category": "reply",
    "summary": "Reply to ticket 881",
    "body": "Hi Sam, your parcel left our warehouse today.",
    "context": "Where is my parcel?",
}


async def test_sync_client_submits_waits_for_approval_and_reports_done(h: Harness, url: str) -> None:
    with Client(h.token, url) as client:
        submitted = await asyncio.to_thread(lambda: client.submit(**REPLY))
        assert submitted.status == "pending" and submitted.reason is None
        assert submitted.idempotency_key.startswith("cs-") and submitted.url

        waiting = await in_thread(client.wait, submitted.id, 20)
        await approve(h, submitted.id)
        draft = await waiting
        assert draft.status == "approved" and draft.execution.status == "none"
        assert draft.final_body == REPLY["body"] and not draft.edited
        assert draft.approvers == ("U0ALICE",) and draft.decisions[0].action == "approve"

        done = await asyncio.to_thread(client.done, draft.id, True, "sent")
        assert done.status == "executed" and done.execution.status == "succeeded"


async def test_async_client_reads_status_and_withdraws(h: Harness, url: str) -> None:
    async with AsyncClient(h.token, url) as client:
        submitted = await client.submit(**REPLY, amount=None)
        draft = await client.get(submitted.id)
        assert draft.status == "pending" and draft.risk.level in ("none", "low", "medium", "high")
        started = time.monotonic()
        still = await client.wait(submitted.id, timeout=0.6)
        assert still.status == "pending" and time.monotonic() - started >= 0.5

        me = await client.me()
        assert me.name == "support-bot" and me.state == "active"
        assert me.categories["refund"].amount_cap == Decimal("500.00")
        await client.heartbeat()

        cancelled = await client.cancel(submitted.id)
        assert cancelled.status == "cancelled"
        with pytest.raises(Conflict):
            await client.cancel(submitted.id)


async def test_edited_draft_comes_back_with_the_reviewers_text(h: Harness, url: str) -> None:
    async with AsyncClient(h.token, url) as client:
        submitted = await client.submit(**REPLY)
        waiting = asyncio.ensure_future(client.wait(submitted.id, 20))
        await edit(h, submitted.id, "Hi Sam, your parcel ships today; tracking follows by email.")
        draft = await waiting
        assert draft.status == "approved" and draft.edited
        assert draft.final_body == "Hi Sam, your parcel ships today; tracking follows by email."
        assert draft.body == REPLY["body"]


async def test_rejection_reason_reaches_the_client(h: Harness, url: str) -> None:
    async with AsyncClient(h.token, url) as client:
        submitted = await client.submit(**REPLY)
        waiting = asyncio.ensure_future(client.wait(submitted.id, 20))
        await reject(h, submitted.id, "Promise no dates")
        draft = await waiting
        assert draft.status == "rejected"
        assert draft.rejection is not None and draft.rejection.reason == "Promise no dates"


async def test_api_errors_map_to_typed_exceptions(h: Harness, url: str) -> None:
    async with AsyncClient("not-a-token", url) as stranger:
        with pytest.raises(Unauthorized) as unauthorized:
            await stranger.me()
        assert unauthorized.value.status == 401
    async with AsyncClient(h.token, url) as client:
        with pytest.raises(Forbidden):
            await client.submit(**REPLY | {"category": "goodwill"})
        with pytest.raises(NotFound):
            await client.get("d_nope")
        with pytest.raises(Invalid) as invalid:
            await client.submit(**REPLY | {"category": "refund"}, amount="lots")
        assert invalid.value.field == "amount" and invalid.value.status == 422
        first = await client.submit(**REPLY, idempotency_key="ticket-881")
        again = await client.submit(**REPLY, idempotency_key="ticket-881")
        assert again.id == first.id
        with pytest.raises(IdempotencyKeyReused):
            await client.submit(**REPLY | {"body": "something else"}, idempotency_key="ticket-881")


async def test_rate_limited_call_is_retried_after_retry_after(h: Harness, url: str) -> None:
    limiter = h.client.app[LIMITER]
    limiter.capacity, limiter.per_seconds = 1, 1.0
    with Client(h.token, url, backoff=0.01) as client:
        started = time.monotonic()
        await asyncio.to_thread(client.me)
        me = await asyncio.to_thread(client.me)  # over the rate: 429, Retry-After: 1, then ok
        assert me.name == "support-bot"
        assert time.monotonic() - started >= 0.9
    async with AsyncClient(h.token, url, max_retries=0) as impatient:
        await asyncio.sleep(1.05)
        await impatient.me()
        with pytest.raises(RateLimited) as limited:
            await impatient.me()
        assert limited.value.retry_after == 1


async def test_unreachable_server_raises_after_bounded_retries() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with (
        Client("token", dead, max_retries=2, backoff=0.01) as client,
        pytest.raises(Unreachable, match="did not answer POST /v1/drafts"),
    ):
        await asyncio.to_thread(lambda: client.submit(**REPLY))
    async with AsyncClient("token", dead, max_retries=1, backoff=0.01) as aclient:
        with pytest.raises(Unreachable):
            await aclient.get("d_1")


def _recording(answers: list[httpx.Response | Exception]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


def test_one_idempotency_key_is_reused_across_every_retry_of_a_submission() -> None:
    created = {"id": "d_1", "status": "pending", "url": "http://x/d_1"}
    transport, seen = _recording(
        [
            httpx.ReadTimeout("sent, no answer"),
            httpx.Response(
                503, headers={"Retry-After": "0"}, json={"error": {"code": "unavailable", "message": "db"}}
            ),
            httpx.Response(409, json={"error": {"code": "conflict", "message": "in flight"}}),
            httpx.Response(202, json=created),
        ]
    )
    with Client("t", "http://countersign.test", transport=transport, backoff=0.001) as client:
        submitted = client.submit(**REPLY)
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 4 and keys == {submitted.idempotency_key}
    assert submitted.id == "d_1"


def test_ambiguous_failure_of_a_state_change_is_not_resent() -> None:
    transport, seen = _recording([httpx.ReadTimeout("sent, no answer")])
    with (
        Client("t", "http://countersign.test", transport=transport, backoff=0.001) as client,
        pytest.raises(Unreachable),
    ):
        client.done("d_1", ok=True)
    assert len(seen) == 1


def test_unavailable_beyond_the_retry_budget_is_raised_with_its_retry_after() -> None:
    transport, seen = _recording(
        [
            httpx.Response(
                503, headers={"Retry-After": "120"}, json={"error": {"code": "unavailable", "message": "x"}}
            )
        ]
    )
    with (
        Client("t", "http://countersign.test", transport=transport, max_retry_wait=30) as client,
        pytest.raises(Unavailable) as unavailable,
    ):
        client.me()
    assert unavailable.value.retry_after == 120 and len(seen) == 1


def test_http_date_retry_after_is_honoured() -> None:
    from countersign_client.protocol import retry_after_seconds

    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None


async def test_draft_ids_cannot_escape_the_drafts_path(h: Harness, url: str) -> None:
    async with AsyncClient(h.token, url) as client:
        with pytest.raises(NotFound):
            await client.get("../agents/me")
