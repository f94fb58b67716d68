"""The outbox worker: claims durable jobs atomically and delivers them with retries.

A job is leased, not owned: if this process dies mid-delivery the lease runs out and any
replica takes the job again, so every handler must be safe to run more than once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.metrics import Metrics
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import OutboxJob

log = logging.getLogger(__name__)

Handler = Callable[[OutboxJob], Awaitable[None]]
GiveUp = Callable[[OutboxJob, str], Awaitable[None]]

BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0


class Permanent(Exception):
    """The target refused for good (e.g. HTTP 400/401/403/404/422): retrying cannot help."""


class RetryLater(Exception):
    """A temporary failure; `retry_after` seconds is the target's own request (Retry-After)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAttempted(Exception):
    """The handler gave the job back before it sent anything (the process is stopping, the agent
    was paused meanwhile, the database failed before the call): it returns to the queue, due in
    `retry_after` seconds, and the attempt is not counted, so such hold-ups never use up a job's
    attempts. Any replica may take it next."""

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def backoff(attempt: int, *, base: float = BACKOFF_BASE, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: between half and all of base·2^(attempt-1), capped."""
    ceiling = min(BACKOFF_CAP, base * 2.0 ** min(max(0, attempt - 1), 30))
    jitter: float = (rng or random).random()
    return ceiling * (0.5 + 0.5 * jitter)


@dataclass
class Worker:
    rt: Runtime
    handlers: dict[str, Handler]
    give_up: dict[str, GiveUp] = field(default_factory=dict)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{random.getrandbits(32):08x}")
    lease: timedelta = timedelta(seconds=60)
    batch: int = 16
    # Deliveries one outside endpoint (a category's executor, an agent's callback URL) may hold
    # at once: a slow or hanging one leaves the other slots to everything else (AC-13).
    per_target: int = 4
    poll_interval: float = 0.5
    backoff_base: float = BACKOFF_BASE
    metrics: Metrics | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _stopping: bool = False
    _targets: Counter[str] = field(default_factory=Counter)  # deliveries in flight by job_target

    def wake(self) -> None:
        """Start the next claim at once; safe to call from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Finish the batch in hand, then return from run()."""
        self._stopping = True
        self.wake()

    async def run(self) -> None:
        """Claim and deliver until stopped or cancelled.

        Up to `batch` deliveries run at once, and claiming goes on while they run: a slow job (an
        executor near its timeout, a post waiting for Slack's per-channel pace) holds one slot,
        never the claiming of everything behind it.
        """
        self._loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                free = self.batch - len(in_flight)
                claimed = 0
                if free > 0:
                    try:
                        claimed = self._start(await self._claim(free), in_flight)
                    except Exception:
                        log.exception("outbox claim failed")
                if claimed and claimed == free:
                    continue  # more may be ready
                if self._stopping:
                    break
                # Sleep until woken, a delivery frees a slot, or the poll interval passes.
                self._wake.clear()
                woken = asyncio.ensure_future(self._wake.wait())
                waiting: set[asyncio.Future[Any]] = {woken}
                if len(in_flight) >= self.batch:
                    waiting |= in_flight
                await asyncio.wait(waiting, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _claim(self, limit: int) -> list[OutboxJob]:
        return await asyncio.to_thread(
            queries.claim_jobs,
            self.rt.engine,
            worker=self.worker_id,
            now=self.rt.clock(),
            lease=self.lease,
            limit=limit,
            in_flight=dict(self._targets),
            per_target=self.per_target,
        )

    def _start(self, jobs: list[OutboxJob], in_flight: set[asyncio.Task[None]]) -> int:
        for job in jobs:
            task = asyncio.create_task(self._deliver(job, self._track(job)), name=f"outbox-{job.id}")
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        return len(jobs)

    async def run_once(self) -> int:
        """Claim one batch and deliver it; the number of jobs taken."""
        jobs = await self._claim(self.batch)
        if jobs:
            await asyncio.gather(*(self._deliver(job, self._track(job)) for job in jobs))
        return len(jobs)

    def _track(self, job: OutboxJob) -> str | None:
        """Count a delivery against its target from its claim on, before its task first runs: the
        next claim may come first."""
        target = queries.job_target(job.kind, job.category, job.agent_id)
        if target is not None:
            self._targets[target] += 1
        return target

    async def _deliver(self, job: OutboxJob, target: str | None) -> None:
        try:
            await self._attempt(job)
        finally:
            if target is not None:
                self._targets[target] -= 1
                if not self._targets[target]:
                    del self._targets[target]

    def _count(self, job: OutboxJob, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.deliveries.labels(job.kind.split(".")[0], outcome).inc()

    async def _attempt(self, job: OutboxJob) -> None:
        handler = self.handlers.get(job.kind)
        try:
            if handler is None:
                raise Permanent(f"no handler for job kind {job.kind!r}")
            await asyncio.wait_for(handler(job), timeout=self.lease.total_seconds() * 0.8)
        except NotAttempted as exc:
            self._count(job, "handed_back")
            due = self.rt.clock() + timedelta(seconds=exc.retry_after)
            await self._record(job, "its release", lambda: self._release(job, due))
        except Permanent as exc:
            self._count(job, "permanent_failure")
            await self._failed(job, f"permanent: {exc}", retry=False)
        except RetryLater as exc:
            self._count(job, "retry")
            await self._failed(job, str(exc), retry=True, retry_after=exc.retry_after)
        except Exception as exc:
            self._count(job, "error")
            log.warning("outbox job %s (%s) attempt %s failed: %r", job.id, job.kind, job.attempts, exc)
            await self._failed(job, f"{type(exc).__name__}: {exc}", retry=True)
        else:
            self._count(job, "delivered")
            await self._record(job, "its delivery", lambda: self._finish(job))

    def _finish(self, job: OutboxJob) -> None:
        with transaction(self.rt.engine) as session:
            queries.finish_job(session, job.id, worker=self.worker_id, now=self.rt.clock())  # type: ignore[arg-type]

    def _release(self, job: OutboxJob, due: datetime) -> None:
        with transaction(self.rt.engine) as session:
            queries.release_job(session, job.id, worker=self.worker_id, run_after=due)  # type: ignore[arg-type]

    async def _record(self, job: OutboxJob, what: str, record: Callable[[], None]) -> bool:
        """Write down how an attempt ended; False when the database failed (a dropped connection).

        The job then stays leased to this worker and runs again once the lease ends, as if this
        process had died: the error is logged here, not left in a task nobody awaits.
        """
        try:
            await asyncio.to_thread(record)
        except Exception as exc:
            log.warning(
                "outbox job %s (%s): could not record %s (%r); it runs again when its lease ends",
                job.id,
                job.kind,
                what,
                exc,
            )
            return False
        return True

    async def _failed(
        self, job: OutboxJob, error: str, *, retry: bool, retry_after: float | None = None
    ) -> None:
        now = self.rt.clock()
        retry_at: datetime | None = None
        if retry and job.attempts < job.max_attempts:
            delay = max(backoff(job.attempts, base=self.backoff_base), retry_after or 0.0)
            retry_at = now + timedelta(seconds=delay)

        def record() -> None:
            with transaction(self.rt.engine) as session:
                queries.fail_job(
                    session,
                    job.id,  # type: ignore[arg-type]
                    worker=self.worker_id,
                    error=error,
                    retry_at=retry_at,
                    now=now,
                )

        if not await self._record(job, "its failure", record):
            return  # not given up yet: the next attempt decides again
        if retry_at is None:
            log.error(
                "outbox job %s (%s) gave up after %s attempts: %s", job.id, job.kind, job.attempts, error
            )
            give_up = self.give_up.get(job.kind)
            if give_up is not None:
                try:
                    await give_up(job, error)
                except Exception:
                    log.exception("give-up hook of job %s failed", job.id)
