"""How listeners reach the use-cases: a middleware puts the Services into Bolt's context."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from slack_bolt.async_app import AsyncAck, AsyncBoltContext

from bot.control import Control
from bot.review import Reviewing
from bot.runtime import Runtime

log = logging.getLogger(__name__)

KEY = "countersign"
# Slack gives up on an ack after 3 s; the reliability checks ask for p99 under 1 s even with a slow
# database (AC-13). Past this, the ack goes first and the answer follows once the change commits.
ACK_BUDGET = 0.75
# When the Slack request being handled reached the server (time.monotonic()): the budget counts
# from there, since Slack's 3 s do. Set for HTTP requests (bot/slack_app.py); Bolt's listener
# tasks inherit it. Unset (Socket Mode), the budget counts from the listener's start.
arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("slack_request_arrived", default=None)

T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    rt: Runtime
    reviewing: Reviewing
    control: Control


Listener = TypeVar("Listener", bound=Callable[..., Awaitable[None]])


def errors_after_ack_logged(listener: Listener) -> Listener:
    """Log, not raise, what fails once Slack has its ack (a Web API call after a committed change).

    Bolt's async runner drops an ack it already has when the listener then raises, waits out its
    3 s and answers 404: Slack would tell the user their click failed when it took effect. A failure
    before the ack still reaches Bolt, which answers 500 at once."""

    @functools.wraps(listener)
    async def run(**kwargs: Any) -> None:
        try:
            await listener(**kwargs)
        except Exception:
            ack: AsyncAck = kwargs["ack"] if "ack" in kwargs else kwargs["context"].ack
            if ack.response is None:
                raise
            log.exception("slack listener %s failed after its ack", listener.__name__)

    return run  # type: ignore[return-value]


def services(context: AsyncBoltContext) -> Services:
    value: Any = context[KEY]
    return value  # type: ignore[no-any-return]


async def ack_when_done(ack: AsyncAck, work: Awaitable[T], *, late_text: str | None = None) -> T:
    """Run a change (a decision, a pause), then ack: by the time Slack has the acknowledgment the
    change is committed, so a pause acknowledged is a pause in effect. Should the change take
    longer than ACK_BUDGET after the request arrived (Bolt's own steps before the listener, such
    as its first auth.test, count too), ack anyway (Slack would show the user an error), with `late_text`
    where Slack shows an ack's text (slash commands), and let it finish; the answer goes to the
    user afterwards either way. A failing change is acked too, then raised."""
    task = asyncio.ensure_future(work)
    since = arrived.get()
    budget = ACK_BUDGET if since is None else max(0.0, since + ACK_BUDGET - time.monotonic())
    done, _ = await asyncio.wait({task}, timeout=budget)
    if done or late_text is None:
        await ack()
    else:
        await ack(text=late_text, response_type="ephemeral")
    if not done:
        log.warning(
            "a Slack interaction took over %.2f s: acknowledged before its change committed", ACK_BUDGET
        )
    return await task
