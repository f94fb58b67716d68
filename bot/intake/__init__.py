"""Intake: check an agent's submission, then store many at once (group commit).

Submissions that arrive while a batch is being written wait for the next one, so under load
one transaction (one fsync, one audit-chain lock) stores dozens of drafts; alone, a draft
is stored at once. Under load the writer lingers a moment before each batch so that the
clients it just answered can join the next one. Every draft still gets its own audit event,
outbox jobs and stored idempotent response, in the same transaction as the draft itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError

from bot import crashpoints
from bot.errors import Conflict, CountersignError
from bot.intake.checks import (
    Checked,
    Prepared,
    agent_categories,
    check,
    prepare,
    request_fingerprint,
    risk_rules,
)
from bot.intake.store import IDEMPOTENCY_RETENTION, Result, store_batch
from bot.runtime import Runtime
from bot.schemas import DraftIn
from storage.db import transaction
from storage.tables import Agent

__all__ = [
    "IDEMPOTENCY_RETENTION",
    "MAX_BATCH",
    "Checked",
    "IntakeWriter",
    "Prepared",
    "Result",
    "agent_categories",
    "check",
    "prepare",
    "request_fingerprint",
    "risk_rules",
    "submit",
    "write_batch",
]

MAX_BATCH = 256
LINGER_SECONDS = 0.002  # see IntakeWriter.run


def write_batch(rt: Runtime, items: list[Prepared]) -> list[Result | CountersignError]:
    """Store submissions in one transaction; one answer (or error) per item, in order."""
    for attempt in range(3):
        try:
            with transaction(rt.engine, audited=True) as session:
                results = store_batch(session, rt, items)
            crashpoints.reached("after_draft_commit")
            rt.wake_outbox()
            return results
        except IntegrityError:
            # Another process stored the same Idempotency-Key first (PostgreSQL waits on the unique
            # index, then fails here). Alone, the retry finds its stored answer; in a batch, split up.
            if len(items) > 1:
                return [write_batch(rt, [item])[0] for item in items]
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def submit(rt: Runtime, *, agent: Agent, draft: DraftIn, key: str | None, base_url: str) -> Result:
    """Check and store one submission (the CLI and tests; the server batches)."""
    result = write_batch(rt, [prepare(rt, agent=agent, draft=draft, key=key, base_url=base_url)])[0]
    if isinstance(result, CountersignError):
        raise result
    return result


class IntakeWriter:
    """Collects concurrent submissions and writes each gathered batch in one transaction."""

    def __init__(self, rt: Runtime, *, max_batch: int = MAX_BATCH, linger: float = LINGER_SECONDS) -> None:
        self.rt = rt
        self.max_batch = max_batch
        self.linger = linger
        self._pending: list[tuple[Prepared, asyncio.Future[Result]]] = []
        self._kick = asyncio.Event()
        self._in_flight: set[tuple[int, str]] = set()

    @contextmanager
    def in_flight(self, agent_id: int, key: str | None) -> Iterator[None]:
        """Hold an Idempotency-Key while its request is being answered: the same key again meanwhile
        is a 409 (IETF Idempotency-Key draft). Once answered, the same key replays the answer."""
        if key is None:
            yield
            return
        pair = (agent_id, key)
        if pair in self._in_flight:
            raise Conflict(
                "a request with this Idempotency-Key is still in flight; retry once it has answered"
            )
        self._in_flight.add(pair)
        try:
            yield
        finally:
            self._in_flight.discard(pair)

    async def submit(self, item: Prepared) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._kick.set()
        return await future

    async def run(self) -> None:
        """Write batches until cancelled."""
        busy = False  # the last batch held more than one submission
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._pending:
                if busy and len(self._pending) < self.max_batch:
                    # Each batch costs ~0.5 ms of CPU whatever its size: waiting 2 ms for the
                    # clients just answered to send again cuts the CPU per draft under load
                    # (bench/intake.py), for 2 ms more latency.
                    await asyncio.sleep(self.linger)
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                busy = len(batch) > 1
                try:
                    results = await asyncio.to_thread(write_batch, self.rt, [item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, CountersignError):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
