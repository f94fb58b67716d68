"""handlers/context.py's ack_when_done: the ack comes after the change, or at the budget with a note."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from slack_bolt.async_app import AsyncAck

from handlers import context


async def test_the_ack_follows_the_change_and_a_failure_is_acked_then_raised() -> None:
    order: list[str] = []

    async def ack(**kwargs: Any) -> None:
        order.append(f"ack {kwargs}")

    async def change() -> str:
        await asyncio.sleep(0.05)
        order.append("committed")
        return "done"

    assert await context.ack_when_done(cast(AsyncAck, ack), change()) == "done"
    assert order == ["committed", "ack {}"]

    async def broken() -> None:
        raise RuntimeError("boom")

    order.clear()
    with pytest.raises(RuntimeError):
        await context.ack_when_done(cast(AsyncAck, ack), broken())
    assert order == ["ack {}"]


async def test_past_the_budget_the_ack_goes_first_with_the_late_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "ACK_BUDGET", 0.05)
    order: list[str] = []

    async def ack(**kwargs: Any) -> None:
        order.append(f"ack {kwargs}")

    async def slow() -> str:
        await asyncio.sleep(0.3)
        order.append("committed")
        return "done"

    assert await context.ack_when_done(cast(AsyncAck, ack), slow(), late_text="Still applying it") == "done"
    assert order == ["ack {'text': 'Still applying it', 'response_type': 'ephemeral'}", "committed"]


async def test_the_budget_counts_from_the_requests_arrival_not_the_listeners_start() -> None:
    """Bolt's steps before the listener (its first auth.test, say) already spent Slack's time."""
    order: list[str] = []

    async def ack(**kwargs: Any) -> None:
        order.append(f"ack {kwargs}")

    async def change() -> str:
        await asyncio.sleep(0.3)
        order.append("committed")
        return "done"

    token = context.arrived.set(time.monotonic() - context.ACK_BUDGET)  # arrived a budget ago
    try:
        assert (
            await context.ack_when_done(cast(AsyncAck, ack), change(), late_text="Still applying it")
            == "done"
        )
    finally:
        context.arrived.reset(token)
    assert order == ["ack {'text': 'Still applying it', 'response_type': 'ephemeral'}", "committed"]
