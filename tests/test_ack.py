"""handlers/context.py's ack_when_done: the ack comes after the change, or at the budget with a note."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from slack_bolt.async_app import AsyncAck

from handlers import context

LATE = "ack {'text': 'Still applying it', 'response_type': 'ephemeral'}"


def recording_ack(order: list[str]) -> AsyncAck:
    """A stand-in for Bolt's ack that notes each call, with its arguments, in `order`."""

    async def ack(**kwargs: Any) -> None:
        order.append(f"ack {kwargs}")

    return cast(AsyncAck, ack)


async def commit_after(seconds: float, order: list[str]) -> str:
    """A change that commits after `seconds`."""
    await asyncio.sleep(seconds)
    order.append("committed")
    return "done"


async def test_the_ack_follows_the_change_and_a_failure_is_acked_then_raised() -> None:
    order: list[str] = []
    ack = recording_ack(order)
    assert await context.ack_when_done(ack, commit_after(0.05, order)) == "done"
    assert order == ["committed", "ack {}"]

    async def broken() -> None:
        raise RuntimeError("boom")

    order.clear()
    with pytest.raises(RuntimeError):
        await context.ack_when_done(ack, broken())
    assert order == ["ack {}"]


async def test_past_the_budget_the_ack_goes_first_with_the_late_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context, "ACK_BUDGET", 0.05)
    order: list[str] = []
    late = context.ack_when_done(
        recording_ack(order), commit_after(0.3, order), late_text="Still applying it"
    )
    assert await late == "done"
    assert order == [LATE, "committed"]


async def test_the_budget_counts_from_the_requests_arrival_not_the_listeners_start() -> None:
    """Bolt's steps before the listener (its first auth.test, say) already spent Slack's time."""
    order: list[str] = []
    token = context.arrived.set(time.monotonic() - context.ACK_BUDGET)  # arrived a budget ago
    try:
        late = context.ack_when_done(
            recording_ack(order), commit_after(0.3, order), late_text="Still applying it"
        )
        assert await late == "done"
    finally:
        context.arrived.reset(token)
    assert order == [LATE, "committed"]
