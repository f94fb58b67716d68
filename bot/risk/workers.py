"""The rule checks in worker processes, so intake's largest CPU item can leave the server's core.

The rules are pure functions of the draft, so they can run in any process. A server with a spare
core can send them to worker processes, many drafts per round trip: a round trip costs the server
~60 µs of CPU (pickling, one pipe write, one read), most of what checking one short draft costs
(~80 µs), so sending drafts one at a time would gain nothing, while a batch of eight costs ~8 µs
per draft.
While every worker is busy new drafts wait and leave together with the next batch. When one is
idle a draft leaves at once, unless the last batch held several drafts: under load the next
draft waits a moment (LINGER_SECONDS) for the others its clients are sending, so that batches
stay large; on a 2-core VM a round trip costs far more in wakeups than in pickling.

Each worker is a spawned process on a private pipe that the event loop watches directly: no
extra thread in the server (concurrent.futures' process pool needs one, and costs ~200 µs of
server CPU per round trip).

With no workers (`risk_workers = 0`, the default) the rules run in the server process. Workers
pay off only where intake is CPU-bound and the host has a core to spare: bench/intake.py on two
cores measured one worker 12% faster with 64 clients and 25% slower with 16 (README). A worker
that dies is replaced and its batch checked in the server process, so no draft waits on a
broken worker; a rule that raises fails only the draft that made it raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bot.risk import Finding, RiskRules, check_rules

log = logging.getLogger(__name__)

MAX_BATCH = 64  # drafts per round trip; at ~150 µs each, about 10 ms of work
MAX_WORKERS = 8
LINGER_SECONDS = 0.001  # under load, how long a draft waits for others to share its round trip
_READY_TIMEOUT = 30.0  # seconds for a spawned worker to import the rules and answer


@dataclass(frozen=True)
class RuleJob:
    """One draft's input to the rules: everything check_rules reads, and nothing else."""

    rules: RiskRules
    body: str
    context: str | None
    amount: Decimal | None
    currency: str | None


def run_job(job: RuleJob) -> list[Finding]:
    return check_rules(
        rules=job.rules, body=job.body, context=job.context, amount=job.amount, currency=job.currency
    )


def serve(conn: Connection) -> None:
    """A worker process: answer each batch of jobs with their findings until the pipe closes."""
    while True:
        try:
            # The pipe is private to this server and its own child: nothing else writes to it.
            jobs: list[RuleJob] = pickle.loads(conn.recv_bytes())  # noqa: S301
        except (EOFError, OSError):
            return  # the server closed the pipe or died
        try:
            answer: tuple[str, Any] = ("ok", [run_job(job) for job in jobs])
        except Exception as exc:
            answer = ("error", f"{type(exc).__name__}: {exc}")
        conn.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


_Waiting = tuple[RuleJob, "asyncio.Future[list[Finding]]"]


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: asyncio.Future[None]
    batch: list[_Waiting] | None = field(default=None)  # in flight; None when idle


class RuleWorkers:
    """Runs the rules for concurrent submissions in worker processes, or in-process without any."""

    def __init__(self, workers: int, *, max_batch: int = MAX_BATCH, linger: float = LINGER_SECONDS) -> None:
        if not 0 <= workers <= MAX_WORKERS:
            raise ValueError(f"risk workers must be between 0 and {MAX_WORKERS}, got {workers}")
        self.workers = workers
        self.max_batch = max_batch
        self.linger = linger
        self.restarts = 0
        self.round_trips = 0
        self._busy = False  # the last batch sent held more than one draft
        self._flush: asyncio.TimerHandle | None = None
        self._pool: list[_Worker] = []
        self._waiting: list[_Waiting] = []
        self._closed = False

    @property
    def running(self) -> int:
        """How many worker processes are ready (0: checks run in this process)."""
        return sum(1 for worker in self._pool if worker.ready.done() and not worker.ready.exception())

    async def start(self) -> None:
        """Start the workers and wait until each has imported the rules (well under a second)."""
        self._pool = [self._spawn() for _ in range(self.workers)]
        results = await asyncio.gather(
            *(asyncio.wait_for(asyncio.shield(worker.ready), _READY_TIMEOUT) for worker in self._pool),
            return_exceptions=True,
        )
        for worker, result in zip(list(self._pool), results, strict=True):
            if isinstance(result, BaseException):
                log.error("a risk worker did not start (%s); checking drafts here instead", result)
                self._retire(worker)

    async def close(self) -> None:
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        pool, self._pool = self._pool, []
        for worker in pool:
            self._retire(worker)
        for worker in pool:
            await asyncio.to_thread(worker.process.join, 5)
            if worker.process.is_alive():
                worker.process.kill()
        waiting, self._waiting = self._waiting, []
        _run_here(waiting)

    async def check(self, job: RuleJob) -> list[Finding]:
        """The findings for one draft, exactly as check_rules gives them."""
        if not self._pool:
            return run_job(job)
        future: asyncio.Future[list[Finding]] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, future))
        if not self._busy or len(self._waiting) >= self.max_batch:
            self._send()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.linger, self._lingered)
        return await future

    def _lingered(self) -> None:
        self._flush = None
        self._send()

    def _spawn(self) -> _Worker:
        # spawn, not fork: the server has threads (database, outbox), and a forked copy of a
        # process with threads can inherit a lock that some other thread held.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=serve, args=(theirs,), name="countersign-risk", daemon=True)
        process.start()
        theirs.close()
        loop = asyncio.get_running_loop()
        worker = _Worker(process=process, conn=ours, ready=loop.create_future())
        loop.add_reader(ours.fileno(), self._readable, worker)
        ours.send_bytes(pickle.dumps([], protocol=pickle.HIGHEST_PROTOCOL))  # answered once ready
        return worker

    def _send(self) -> None:
        for worker in self._pool:
            if not self._waiting:
                return
            if worker.batch is not None or not worker.ready.done():
                continue
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            worker.batch = batch
            self._busy = len(batch) > 1
            self.round_trips += 1
            try:
                worker.conn.send_bytes(
                    pickle.dumps([job for job, _ in batch], protocol=pickle.HIGHEST_PROTOCOL)
                )
            except OSError as exc:  # the worker died since its last answer
                self._lost(worker, exc)
                return  # _lost sent the rest on

    def _readable(self, worker: _Worker) -> None:
        try:
            status, value = pickle.loads(worker.conn.recv_bytes())  # noqa: S301 (our own child)
        except (EOFError, OSError) as exc:
            self._lost(worker, exc)
            return
        if not worker.ready.done():
            worker.ready.set_result(None)
        batch, worker.batch = worker.batch, None
        if batch is not None:
            if status == "ok":
                for (_, future), findings in zip(batch, value, strict=True):
                    if not future.done():
                        future.set_result(findings)
            else:
                # Checked again here, one by one: a rule that raised fails only its own draft.
                _run_here(batch)
        self._send()

    def _lost(self, worker: _Worker, error: BaseException) -> None:
        """A worker died: check its batch here and start a replacement (unless it never started)."""
        batch, worker.batch = worker.batch, None
        started = worker.ready.done()
        self._retire(worker)
        _run_here(batch or [])
        if self._closed:
            return
        if not started:
            log.error("a risk worker exited while starting (%s); checking drafts here instead", error)
        else:
            log.error("a risk worker died (%s); starting a new one", error)
            self.restarts += 1
            try:
                self._pool.append(self._spawn())
            except OSError:
                log.exception("cannot start a risk worker; checking drafts here instead")
        if not self._pool:
            waiting, self._waiting = self._waiting, []
            _run_here(waiting)
        self._send()

    def _retire(self, worker: _Worker) -> None:
        with contextlib.suppress(ValueError):
            self._pool.remove(worker)
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        worker.conn.close()
        if not worker.ready.done():
            worker.ready.set_exception(RuntimeError("the risk worker stopped"))
            worker.ready.exception()  # retrieved: nobody else may wait on it


def _run_here(batch: list[_Waiting]) -> None:
    for job, future in batch:
        if future.done():
            continue
        try:
            future.set_result(run_job(job))
        except Exception as exc:
            future.set_exception(exc)
