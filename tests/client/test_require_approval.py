from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from countersign_client import (
    AsyncClient,
    CarriedOutElsewhere,
    Client,
    Expired,
    HumanTookOver,
    Rejected,
    StillPending,
    Unreachable,
    require_approval,
)

from tests.client.conftest import Drafts, approve, edit, in_thread, reject
from tests.harness import Harness
from tests.processes import free_port


def sync_sender(client: Client, sent: list[dict[str, Any]], **options: Any) -> Any:
    @require_approval(
        client,
        category="reply",
        summary="Reply to ticket {ticket}",
        body_param="text",
        context_param="question",
        **options,
    )
    def send_reply(ticket: str, text: str, question: str = "") -> str:
        sent.append({"ticket": ticket, "text": text})
        return f"sent {ticket}"

    return send_reply


async def test_approved_function_runs_once_and_is_reported_done(h: Harness, url: str, drafts: Drafts) -> None:
    sent: list[dict[str, Any]] = []
    with Client(h.token, url) as client:
        send_reply = sync_sender(client, sent)
        running = await in_thread(send_reply, "T-1", "Your parcel left today.", question="Where is it?")
        draft_id = await drafts.next()
        assert sent == []
        await approve(h, draft_id)
        assert await running == "sent T-1"
    assert sent == [{"ticket": "T-1", "text": "Your parcel left today."}]
    view = await h.status(draft_id, "executed")
    assert view["summary"] == "Reply to ticket T-1" and view["context"] == "Where is it?"
    assert view["execution"]["status"] == "succeeded"


async def test_edited_values_reach_the_async_function(
    h: Harness, url: str, drafts: Drafts, goodwill_token: str
) -> None:
    received: list[tuple[str, Decimal]] = []
    async with AsyncClient(goodwill_token, url) as client:

        @require_approval(
            client,
            category="goodwill",
            summary="Goodwill credit for {customer}",
            body_param="note",
            amount_param="amount",
        )
        async def credit(customer: str, note: str, amount: Decimal) -> None:
            received.append((note, amount))

        running = asyncio.ensure_future(credit("Dana", "Sorry for the delay: $40 credit.", Decimal("40.00")))
        draft_id = await drafts.next()
        await edit(h, draft_id, "Sorry for the delay: $25 credit.", amount="25.00")
        await running
        view = await client.get(draft_id)
    assert received == [("Sorry for the delay: $25 credit.", Decimal("25.00"))]
    assert isinstance(received[0][1], Decimal)
    assert view.status == "executed" and view.amount == Decimal("25.00") and view.edited


async def test_rejection_raises_with_the_reviewers_reason(h: Harness, url: str, drafts: Drafts) -> None:
    sent: list[dict[str, Any]] = []
    with Client(h.token, url) as client:
        send_reply = sync_sender(client, sent)
        running = await in_thread(send_reply, "T-2", "We guarantee delivery tomorrow.")
        await reject(h, await drafts.next(), "Never promise delivery dates")
        with pytest.raises(Rejected) as rejected:
            await running
    assert rejected.value.reason == "Never promise delivery dates" and rejected.value.by == "U0ALICE"
    assert "Never promise delivery dates" in str(rejected.value)
    assert sent == []


async def test_paused_agent_raises_human_took_over_and_never_runs(h: Harness, url: str) -> None:
    await h.command("U0ALICE", "pause support-bot checking a complaint")
    sent: list[dict[str, Any]] = []
    with Client(h.token, url) as client:
        send_reply = sync_sender(client, sent)
        with pytest.raises(HumanTookOver) as took_over:
            await asyncio.to_thread(send_reply, "T-3", "Hello")
    assert took_over.value.reason == "agent_paused" and took_over.value.draft.status == "manual"
    assert sent == []


async def test_pause_after_approval_still_stops_the_function(h: Harness, url: str) -> None:
    sent: list[dict[str, Any]] = []
    async with AsyncClient(h.token, url) as client:

        @require_approval(
            client,
            category="reply",
            summary="Reply {ticket}",
            body_param="text",
            idempotency_key="r-{ticket}",
        )
        async def send_reply(ticket: str, text: str) -> None:
            sent.append({"ticket": ticket})

        # The same draft, approved before the agent (re)attaches to it; then the brake is pulled.
        first = await client.submit(
            category="reply", summary="Reply T-4", body="Hello", idempotency_key="r-T-4"
        )
        await approve(h, first.id)
        await h.status(first.id, "approved")
        await h.command("U0BOB", "pause support-bot incident")
        with pytest.raises(HumanTookOver) as took_over:
            await send_reply("T-4", "Hello")
        after = await client.get(first.id)
    assert took_over.value.reason == "agent_paused" and sent == []
    # Shown to the team as not carried out (and its cap released), never left dangling as approved.
    assert after.status == "failed" and "agent_paused" in (after.execution.last_error or "")


async def test_category_switched_to_manual_after_approval_stops_the_function(h: Harness, url: str) -> None:
    sent: list[str] = []
    async with AsyncClient(h.token, url) as client:

        @require_approval(client, category="reply", summary="Reply", body_param="text", idempotency_key="r-1")
        async def send_reply(text: str) -> None:
            sent.append(text)

        first = await client.submit(category="reply", summary="Reply", body="Hello", idempotency_key="r-1")
        await approve(h, first.id)
        await h.status(first.id, "approved")
        await h.command("U0BOB", "manual reply")
        with pytest.raises(HumanTookOver) as took_over:
            await send_reply("Hello")
    assert took_over.value.reason == "category_manual" and sent == []


async def test_expired_draft_raises_expired(h: Harness, url: str, drafts: Drafts) -> None:
    sent: list[dict[str, Any]] = []
    with Client(h.token, url) as client:
        send_reply = sync_sender(client, sent)
        running = await in_thread(send_reply, "T-5", "Hello")
        await drafts.next()
        h.clock.advance(hours=24, seconds=1)
        with pytest.raises(Expired):
            await running
    assert sent == []


async def test_no_decision_in_time_withdraws_the_draft(h: Harness, url: str) -> None:
    sent: list[dict[str, Any]] = []
    with Client(h.token, url) as client:
        send_reply = sync_sender(client, sent, timeout=0.5)
        with pytest.raises(StillPending) as pending:
            await asyncio.to_thread(send_reply, "T-6", "Hello")
    assert pending.value.draft.status == "cancelled" and sent == []


async def test_unreachable_countersign_never_runs_the_function() -> None:
    ran: list[str] = []
    dead = f"http://127.0.0.1:{free_port()}"
    with Client("token", dead, max_retries=1, backoff=0.01) as client:

        @require_approval(client, category="reply", summary="Reply", body_param="text")
        def send_reply(text: str) -> None:
            ran.append(text)

        with pytest.raises(Unreachable):
            await asyncio.to_thread(send_reply, "Hello")
    async with AsyncClient("token", dead, max_retries=1, backoff=0.01) as aclient:

        @require_approval(aclient, category="reply", summary="Reply", body_param="text")
        async def send_reply_async(text: str) -> None:
            ran.append(text)

        with pytest.raises(Unreachable):
            await send_reply_async("Hello")
    assert ran == []


async def test_failure_of_the_function_is_reported_as_failed(h: Harness, url: str, drafts: Drafts) -> None:
    async with AsyncClient(h.token, url) as client:

        @require_approval(client, category="reply", summary="Reply", body_param="text")
        async def send_reply(text: str) -> None:
            raise RuntimeError("mail server down")

        running = asyncio.ensure_future(send_reply("Hello"))
        draft_id = await drafts.next()
        await approve(h, draft_id)
        with pytest.raises(RuntimeError):
            await running
    view = await h.status(draft_id, "failed")
    assert view["execution"]["last_error"] == "RuntimeError: mail server down"


async def test_category_with_an_executor_is_not_carried_out_by_the_agent(
    h: Harness, url: str, drafts: Drafts
) -> None:
    ran: list[str] = []
    async with AsyncClient(h.token, url) as client:

        @require_approval(
            client, category="refund", summary="Refund {order}", body_param="text", amount_param="amount"
        )
        async def refund(order: str, text: str, amount: str) -> None:
            ran.append(order)

        running = asyncio.ensure_future(refund("1042", "Refunded $30.00.", "30.00"))
        await approve(h, await drafts.next())
        with pytest.raises(CarriedOutElsewhere):
            await running
    assert ran == [] and len(h.executor.requests) <= 1


async def test_same_key_after_a_restart_attaches_to_the_first_draft(
    h: Harness, url: str, drafts: Drafts
) -> None:
    sent: list[dict[str, Any]] = []
    with Client(h.token, url) as client:
        send_reply = sync_sender(client, sent, idempotency_key="reply-{ticket}")
        running = await in_thread(send_reply, "T-7", "Hello")
        await approve(h, await drafts.next())
        await running
        # A rerun with the same arguments finds the draft already done and does nothing.
        with pytest.raises(CarriedOutElsewhere):
            await asyncio.to_thread(send_reply, "T-7", "Hello")
    assert len(sent) == 1


def test_decorator_checks_its_wiring_at_decoration_time() -> None:
    client = Client("token", "http://127.0.0.1:9")
    try:
        with pytest.raises(TypeError, match="no parameter 'text'"):

            @require_approval(client, category="reply", summary="x", body_param="text")
            def no_text(body: str) -> None: ...

        with pytest.raises(TypeError, match="needs an AsyncClient"):

            @require_approval(client, category="reply", summary="x")
            async def wrong_client(body: str) -> None: ...

    finally:
        client.close()
