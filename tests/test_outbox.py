from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from bot import agents
from bot.outbox import BACKOFF_CAP, NotAttempted, Permanent, RetryLater, Worker, backoff
from bot.runtime import Runtime
from storage import queries
from storage.db import create_db_engine, transaction
from storage.tables import OutboxJob

if TYPE_CHECKING:
    # Not imported at run time: the spawned claimers import this module and should start fast.
    from tests.conftest import FrozenClock

job_t = OutboxJob.__table__  # type: ignore[attr-defined]
LEASE = timedelta(seconds=60)


def enqueue(rt: Runtime, kind: str = "slack.post", count: int = 1, **options: Any) -> list[int]:
    with transaction(rt.engine) as session:
        for i in range(count):
            queries.enqueue(session, kind, {"n": i}, now=rt.clock(), **options)
    with rt.engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.select(job_t.c.id).order_by(job_t.c.id))][-count:]


def job(rt: Runtime, job_id: int) -> OutboxJob:
    with transaction(rt.engine) as session:
        found = session.get(OutboxJob, job_id)
        assert found is not None
        return found


def claim(rt: Runtime, worker: str, *, at: datetime | None = None, limit: int = 10) -> list[int]:
    jobs = queries.claim_jobs(rt.engine, worker=worker, now=at or rt.clock(), lease=LEASE, limit=limit)
    return [j.id for j in jobs if j.id is not None]


def _claim_until_empty(url: str, worker: str, now: str, barrier: Any, results: Any) -> None:
    engine = create_db_engine(url, pool_size=1)
    barrier.wait(timeout=60)
    taken: list[int] = []
    while jobs := queries.claim_jobs(
        engine, worker=worker, now=datetime.fromisoformat(now), lease=LEASE, limit=3
    ):
        taken.extend(j.id for j in jobs if j.id is not None)
    results.put((worker, taken))
    engine.dispose()


def test_claim_gives_every_job_to_exactly_one_process_when_processes_race(rt: Runtime, db_url: str) -> None:
    ids = enqueue(rt, count=120)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    claimers = [
        ctx.Process(
            target=_claim_until_empty, args=(db_url, f"w{n}", rt.clock().isoformat(), barrier, results)
        )
        for n in range(4)
    ]
    try:
        for claimer in claimers:
            claimer.start()
        taken = dict(results.get(timeout=120) for _ in claimers)
        for claimer in claimers:
            claimer.join(timeout=30)
        assert [claimer.exitcode for claimer in claimers] == [0] * 4
    finally:
        for claimer in claimers:
            if claimer.is_alive():
                claimer.kill()
    every_claim = [job_id for claimed in taken.values() for job_id in claimed]
    assert sorted(every_claim) == sorted(ids)
    with rt.engine.connect() as conn:
        stored = {row.id: row for row in conn.execute(sa.select(job_t))}
    for who, claimed in taken.items():
        for job_id in claimed:
            assert stored[job_id].claimed_by == who
            assert stored[job_id].status == "running" and stored[job_id].attempts == 1


def test_claim_takes_nothing_while_the_lease_of_a_running_job_holds(rt: Runtime, clock: FrozenClock) -> None:
    (job_id,) = enqueue(rt)
    assert claim(rt, "w1") == [job_id]
    assert claim(rt, "w2") == []
    assert claim(rt, "w2", at=clock() + LEASE) == []


def test_claim_takes_a_crashed_workers_job_again_once_its_lease_runs_out(
    rt: Runtime, clock: FrozenClock
) -> None:
    (job_id,) = enqueue(rt)
    assert claim(rt, "crashed") == [job_id]
    clock.advance(seconds=LEASE.total_seconds() + 1)
    assert claim(rt, "w2") == [job_id]
    retaken = job(rt, job_id)
    assert retaken.claimed_by == "w2" and retaken.attempts == 2
    assert retaken.lease_until == clock() + LEASE


def test_finish_and_fail_do_nothing_when_the_worker_lost_its_lease(rt: Runtime, clock: FrozenClock) -> None:
    (job_id,) = enqueue(rt)
    claim(rt, "slow")
    clock.advance(seconds=LEASE.total_seconds() + 1)
    claim(rt, "w2")
    with transaction(rt.engine) as session:
        assert not queries.finish_job(session, job_id, worker="slow", now=clock())
        assert not queries.fail_job(session, job_id, worker="slow", error="late", retry_at=None, now=clock())
    still = job(rt, job_id)
    assert (still.status, still.claimed_by, still.last_error) == ("running", "w2", None)
    with transaction(rt.engine) as session:
        assert queries.finish_job(session, job_id, worker="w2", now=clock())
    assert job(rt, job_id).status == "done"


def test_claim_skips_jobs_that_are_not_due_yet(rt: Runtime, clock: FrozenClock) -> None:
    (job_id,) = enqueue(rt, delay=timedelta(seconds=30))
    assert claim(rt, "w1") == []
    clock.advance(seconds=30)
    assert claim(rt, "w1") == [job_id]


def test_backoff_doubles_per_attempt_within_its_jitter_band() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(BACKOFF_CAP, 2.0 ** (attempt - 1))
        delays = [backoff(attempt, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert max(delays) - min(delays) > ceiling / 4


def test_backoff_is_jittered_so_workers_do_not_retry_in_step() -> None:
    delays = {backoff(5, rng=random.Random(seed)) for seed in range(20)}
    assert len(delays) == 20


@pytest.mark.parametrize("attempt", [10, 30, 1000, 5000])
def test_backoff_never_exceeds_the_cap_when_attempts_are_many(attempt: int) -> None:
    rng = random.Random(attempt)
    delays = [backoff(attempt, rng=rng) for _ in range(50)]
    assert all(BACKOFF_CAP / 2 <= delay <= BACKOFF_CAP for delay in delays)


Handler = Callable[[OutboxJob], Awaitable[None]]


class Recorder:
    def __init__(self, outcome: BaseException | None = None) -> None:
        self.outcome = outcome
        self.calls: list[OutboxJob] = []
        self.gave_up: list[tuple[int | None, str]] = []

    async def handle(self, job: OutboxJob) -> None:
        self.calls.append(job)
        if self.outcome is not None:
            raise self.outcome

    async def give_up(self, job: OutboxJob, error: str) -> None:
        self.gave_up.append((job.id, error))


def worker(rt: Runtime, recorder: Recorder, kind: str = "slack.post") -> Worker:
    return Worker(
        rt=rt, handlers={kind: recorder.handle}, give_up={kind: recorder.give_up}, worker_id="w1", lease=LEASE
    )


async def test_worker_marks_a_job_done_when_its_handler_succeeds(rt: Runtime, clock: FrozenClock) -> None:
    (job_id,) = enqueue(rt)
    recorder = Recorder()
    assert await worker(rt, recorder).run_once() == 1
    assert [json.loads(call.payload) for call in recorder.calls] == [{"n": 0}]
    done = job(rt, job_id)
    assert (done.status, done.attempts, done.finished_at, done.last_error) == ("done", 1, clock(), None)
    assert await worker(rt, recorder).run_once() == 0


async def test_worker_requeues_no_earlier_than_retry_after_when_the_target_asks(
    rt: Runtime, clock: FrozenClock
) -> None:
    (job_id,) = enqueue(rt)
    recorder = Recorder(RetryLater("slack said ratelimited", retry_after=120))
    assert await worker(rt, recorder).run_once() == 1
    queued = job(rt, job_id)
    assert queued.status == "queued" and queued.last_error == "slack said ratelimited"
    assert queued.run_after >= clock() + timedelta(seconds=120)
    clock.advance(seconds=119)
    assert await worker(rt, recorder).run_once() == 0
    recorder.outcome = None
    clock.advance(seconds=1)
    assert await worker(rt, recorder).run_once() == 1
    assert (job(rt, job_id).status, job(rt, job_id).attempts, len(recorder.calls)) == ("done", 2, 2)


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (RetryLater("HTTP 503"), "HTTP 503"),
        (ConnectionResetError("reset by peer"), "ConnectionResetError: reset by peer"),
    ],
)
async def test_worker_requeues_with_backoff_and_records_the_error_when_an_attempt_fails(
    rt: Runtime, clock: FrozenClock, outcome: Exception, error: str
) -> None:
    (job_id,) = enqueue(rt)
    recorder = Recorder(outcome)
    await worker(rt, recorder).run_once()
    queued = job(rt, job_id)
    assert (queued.status, queued.last_error, queued.attempts) == ("queued", error, 1)
    assert clock() + timedelta(seconds=0.5) <= queued.run_after <= clock() + timedelta(seconds=1)
    assert recorder.gave_up == []


async def test_a_job_given_back_untried_is_queued_at_once_and_its_attempt_not_counted(
    rt: Runtime, clock: FrozenClock
) -> None:
    (job_id,) = enqueue(rt)
    recorder = Recorder(NotAttempted("stopping"))
    assert await worker(rt, recorder).run_once() == 1
    back = job(rt, job_id)
    assert (back.status, back.attempts, back.run_after, back.lease_until, back.claimed_by) == (
        "queued",
        0,
        clock(),
        None,
        "w1",
    )
    assert back.last_error is None and recorder.gave_up == []
    recorder.outcome = None
    assert await worker(rt, recorder).run_once() == 1  # taken again at once, by any worker
    assert (job(rt, job_id).status, job(rt, job_id).attempts) == ("done", 1)


async def test_worker_marks_a_permanent_failure_dead_without_retrying(
    rt: Runtime, clock: FrozenClock
) -> None:
    (job_id,) = enqueue(rt)
    recorder = Recorder(Permanent("HTTP 404 channel_not_found"))
    await worker(rt, recorder).run_once()
    dead = job(rt, job_id)
    assert (dead.status, dead.attempts, dead.finished_at) == ("dead", 1, clock())
    assert dead.last_error == "permanent: HTTP 404 channel_not_found"
    assert recorder.gave_up == [(job_id, "permanent: HTTP 404 channel_not_found")]
    clock.advance(days=1)
    assert await worker(rt, recorder).run_once() == 0
    assert len(recorder.calls) == 1


async def test_worker_marks_a_job_of_unknown_kind_dead(rt: Runtime) -> None:
    (job_id,) = enqueue(rt, kind="nobody.handles")
    await worker(rt, Recorder()).run_once()
    dead = job(rt, job_id)
    assert dead.status == "dead" and dead.last_error is not None and "nobody.handles" in dead.last_error


async def test_worker_gives_up_once_when_attempts_run_out(rt: Runtime, clock: FrozenClock) -> None:
    (job_id,) = enqueue(rt, max_attempts=3)
    recorder = Recorder(TimeoutError("no answer"))
    for _ in range(6):
        await worker(rt, recorder).run_once()
        clock.advance(minutes=10)
    dead = job(rt, job_id)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 3, "TimeoutError: no answer")
    assert len(recorder.calls) == 3
    assert recorder.gave_up == [(job_id, "TimeoutError: no answer")]


@pytest.mark.parametrize(
    ("kind", "attempts"), [("slack.alert", queries.SLACK_ATTEMPTS), ("callback.send", 8)]
)
async def test_slacks_jobs_outlast_a_long_outage_and_other_targets_give_up_sooner(
    rt: Runtime, clock: FrozenClock, kind: str, attempts: int
) -> None:
    # An alert (or a card's update) must not be lost to a Slack outage of an hour or a day.
    (job_id,) = enqueue(rt, kind)
    recorder = Recorder(RetryLater("slack error 503"))
    for _ in range(12):
        await worker(rt, recorder, kind).run_once()
        clock.advance(minutes=10)  # past the longest backoff (5 min)
    waiting = job(rt, job_id)
    assert waiting.max_attempts == attempts
    if kind == "slack.alert":
        assert (waiting.status, waiting.attempts, recorder.gave_up) == ("queued", 12, [])
        recorder.outcome = None
        await worker(rt, recorder, kind).run_once()
        assert job(rt, job_id).status == "done"
    else:
        assert (waiting.status, waiting.attempts) == ("dead", 8)


async def test_worker_delivers_the_other_jobs_of_a_batch_when_one_fails(rt: Runtime) -> None:
    ids = enqueue(rt, count=3)
    failing_id = ids[1]

    async def handle(job: OutboxJob) -> None:
        if job.id == failing_id:
            raise Permanent("bad request")

    await Worker(rt=rt, handlers={"slack.post": handle}, worker_id="w1").run_once()
    assert [job(rt, job_id).status for job_id in ids] == ["done", "dead", "done"]


async def test_a_hanging_executor_holds_only_its_share_of_slots_and_the_rest_keeps_flowing(
    rt: Runtime, clock: FrozenClock
) -> None:
    """AC-13: the refund executor hangs with more calls queued than the worker has slots. The
    reply executor's calls, agent callbacks and Slack posts queued after them still go at once."""
    from tests.harness import eventually  # not at import: spawned claimers import this module

    enqueue(rt, "executor.call", count=20, agent_id=1, category="refund")
    clock.advance(seconds=1)  # everything below is queued behind the refunds
    enqueue(rt, "executor.call", count=2, agent_id=1, category="reply")
    enqueue(rt, "callback.send", count=2, agent_id=1)
    enqueue(rt, "slack.render", count=2)
    hang = asyncio.Event()
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    done: Counter[str] = Counter()

    async def deliver(job: OutboxJob) -> None:
        name = job.category or job.kind
        running[name] += 1
        most[name] = max(most[name], running[name])
        if name == "refund":
            await hang.wait()
        running[name] -= 1
        done[name] += 1

    kinds = ("executor.call", "callback.send", "slack.render")
    w = Worker(rt=rt, handlers=dict.fromkeys(kinds, deliver), worker_id="w1", lease=LEASE, poll_interval=0.05)
    task = asyncio.create_task(w.run())
    try:
        await eventually(lambda: done == Counter({"reply": 2, "callback.send": 2, "slack.render": 2}))
        assert running["refund"] == w.per_target < w.batch  # the rest of the refunds wait their turn
        hang.set()
        await eventually(lambda: done["refund"] == 20)
        assert most["refund"] == w.per_target
    finally:
        w.stop()
        await asyncio.wait_for(task, timeout=30)


def test_a_claim_takes_no_more_of_one_target_than_its_share(rt: Runtime, clock: FrozenClock) -> None:
    enqueue(rt, "executor.call", count=6, agent_id=1, category="refund")
    clock.advance(seconds=1)
    enqueue(rt, "callback.send", count=6, agent_id=7)
    clock.advance(seconds=1)
    enqueue(rt, "slack.render", count=6)

    def take(in_flight: dict[str, int]) -> Counter[str]:
        jobs = queries.claim_jobs(
            rt.engine, worker="w1", now=rt.clock(), lease=LEASE, limit=10, in_flight=in_flight, per_target=4
        )
        return Counter(j.kind for j in jobs)

    assert take({"executor:refund": 3}) == Counter(
        {"executor.call": 1, "callback.send": 4, "slack.render": 5}
    )
    assert take({"executor:refund": 4, "callback:7": 4}) == Counter({"slack.render": 1})
    assert take({}) == Counter({"executor.call": 4, "callback.send": 2})


def add_agent(rt: Runtime, name: str = "support-bot") -> int:
    agents.add(rt, name=name, categories=["refund", "reply"], callback_prefixes=[])
    with rt.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT id FROM agent WHERE name = :n"), {"n": name}).scalar_one())


def set_agent_state(rt: Runtime, agent_id: int, state: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(sa.text("UPDATE agent SET state = :s WHERE id = :id"), {"s": state, "id": agent_id})


def set_control(rt: Runtime, key: str, value: dict[str, Any] | None) -> None:
    with transaction(rt.engine) as session:
        queries.set_control(session, key, value, by="U0ADMIN", at=rt.clock())


def test_executor_jobs_of_a_paused_agent_are_not_claimed_until_it_resumes(rt: Runtime) -> None:
    paused, other = add_agent(rt), add_agent(rt, "other-bot")
    (held,) = enqueue(rt, "executor.call", agent_id=paused, category="refund")
    (free,) = enqueue(rt, "executor.call", agent_id=other, category="refund")
    (render,) = enqueue(rt, "slack.render", agent_id=paused, category="refund")
    set_agent_state(rt, paused, "paused")
    assert sorted(claim(rt, "w1")) == sorted([free, render])
    assert claim(rt, "w1") == []
    set_agent_state(rt, paused, "active")
    assert claim(rt, "w1") == [held]


def test_executor_jobs_are_not_claimed_while_everything_is_paused(rt: Runtime) -> None:
    agent_id = add_agent(rt)
    (held,) = enqueue(rt, "executor.call", agent_id=agent_id, category="refund")
    (render,) = enqueue(rt, "slack.render", agent_id=agent_id)
    set_control(rt, "pause:all", {"reason": "incident"})
    assert claim(rt, "w1") == [render]
    set_control(rt, "pause:all", None)
    assert claim(rt, "w1") == [held]


def test_executor_jobs_of_a_manual_category_are_not_claimed_while_it_is_manual(rt: Runtime) -> None:
    agent_id = add_agent(rt)
    (held,) = enqueue(rt, "executor.call", agent_id=agent_id, category="refund")
    (other,) = enqueue(rt, "executor.call", agent_id=agent_id, category="reply")
    set_control(rt, "mode:refund", {"mode": "manual"})
    assert claim(rt, "w1") == [other]
    set_control(rt, "mode:refund", None)
    assert claim(rt, "w1") == [held]


def test_a_running_executor_job_whose_lease_expires_during_a_pause_is_not_retaken(
    rt: Runtime, clock: FrozenClock
) -> None:
    agent_id = add_agent(rt)
    (held,) = enqueue(rt, "executor.call", agent_id=agent_id, category="refund")
    assert claim(rt, "crashed") == [held]
    set_agent_state(rt, agent_id, "paused")
    clock.advance(seconds=LEASE.total_seconds() + 1)
    assert claim(rt, "w2") == []
    set_agent_state(rt, agent_id, "active")
    assert claim(rt, "w2") == [held]
