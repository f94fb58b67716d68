"""Housekeeping (bot/retention.py): delivered jobs, dead jobs and stored Idempotency-Key answers
are deleted once their keeping time is up; drafts, decisions and the audit log never are."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from bot import agents, audit, retention
from bot.runtime import Runtime
from bot.settings import load_settings
from storage.db import create_db_engine, transaction
from storage.tables import IdempotencyRecord, OutboxJob
from tests.conftest import Api, FrozenClock, make_env, write_config
from tests.harness import eventually, harness
from tests.test_cli import run


def _job(session: Session, name: str, status: str, *, age: timedelta, now_: FrozenClock) -> None:
    finished = now_() - age if status in ("done", "dead") else None
    session.add(
        OutboxJob(
            kind="slack.alert",
            payload=f'{{"name": "{name}"}}',
            status=status,
            created_at=now_() - age - timedelta(minutes=1),
            run_after=now_() - age,
            finished_at=finished,
        )
    )


def _stored_answers(
    session: Session, agent_id: int, count: int, *, age: timedelta, now_: FrozenClock
) -> None:
    for n in range(count):
        session.add(
            IdempotencyRecord(
                agent_id=agent_id,
                key=f"key-{n}",
                request_hash="h",
                response_status=202,
                response_body="{}",
                created_at=now_() - age,
            )
        )


def _remaining(rt: Runtime) -> set[str]:
    with rt.engine.connect() as conn:
        return {str(p) for (p,) in conn.execute(sa.text("SELECT payload FROM outbox_job"))}


def _keys(rt: Runtime) -> set[str]:
    with rt.engine.connect() as conn:
        return {str(k) for (k,) in conn.execute(sa.text('SELECT "key" FROM idempotency_record'))}


def _audit_rows(rt: Runtime) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_event")).scalar_one())


async def test_a_sweep_deletes_only_rows_past_their_keeping_time(api: Api, clock: FrozenClock) -> None:
    rt = api.rt
    for key in ("old-key", "young-key"):
        response = await api.client.post(
            "/v1/drafts",
            json={"category": "reply", "summary": "s", "body": f"body {key}"},
            headers=api.auth() | {"Idempotency-Key": key},
        )
        assert response.status == 202, await response.text()
        clock.advance(hours=2)
    # "old-key" is now 25 h old, "young-key" 23 h.
    clock.advance(hours=21)
    with transaction(rt.engine) as session:
        for name, status, age in [
            ("done-8d", "done", timedelta(days=8)),
            ("done-6d", "done", timedelta(days=6, hours=23)),
            ("dead-31d", "dead", timedelta(days=31)),
            ("dead-29d", "dead", timedelta(days=29)),
            ("queued-40d", "queued", timedelta(days=40)),
            ("running-40d", "running", timedelta(days=40)),
        ]:
            _job(session, name, status, age=age, now_=clock)
    jobs_before = _remaining(rt)
    audit_before = _audit_rows(rt)
    assert audit.verify(rt.engine).ok

    pruned = retention.prune(rt)

    assert pruned == retention.Pruned(done_jobs=1, dead_jobs=1, idempotency_records=1)
    assert _remaining(rt) == jobs_before - {'{"name": "done-8d"}', '{"name": "dead-31d"}'}
    assert _keys(rt) == {"young-key"}
    assert _audit_rows(rt) == audit_before
    assert audit.verify(rt.engine).ok
    with rt.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM draft")).scalar_one() == 2
    assert retention.prune(rt) == retention.Pruned(
        0, 0, 0
    )  # a second sweep, or another replica's, is a no-op


async def test_an_expired_key_swept_away_is_a_new_request_and_a_live_one_still_replays(
    api: Api, clock: FrozenClock
) -> None:
    headers = api.auth() | {"Idempotency-Key": "k-1"}
    first = await api.client.post(
        "/v1/drafts", json={"category": "reply", "summary": "s", "body": "one"}, headers=headers
    )
    assert first.status == 202
    first_id = (await first.json())["id"]
    clock.advance(hours=23)
    assert retention.prune(api.rt).idempotency_records == 0
    replay = await api.client.post(
        "/v1/drafts", json={"category": "reply", "summary": "s", "body": "one"}, headers=headers
    )
    assert (await replay.json())["id"] == first_id
    clock.advance(hours=2)
    assert retention.prune(api.rt).idempotency_records == 1
    again = await api.client.post(
        "/v1/drafts", json={"category": "reply", "summary": "s", "body": "two"}, headers=headers
    )
    assert again.status == 202, await again.text()
    assert (await again.json())["id"] != first_id


def test_a_backlog_is_deleted_in_chunks_of_its_own_transactions(rt: Runtime, clock: FrozenClock) -> None:
    agents.add(rt, name="support-bot", categories=["reply"], callback_prefixes=[])
    with transaction(rt.engine) as session:
        agent_id = int(session.execute(sa.text("SELECT id FROM agent")).scalar_one())
        for n in range(7):
            _job(session, f"done-{n}", "done", age=timedelta(days=9), now_=clock)
        _job(session, "done-fresh", "done", age=timedelta(days=1), now_=clock)
        _stored_answers(session, agent_id, 5, age=timedelta(days=2), now_=clock)

    pruned = retention.prune(rt, chunk=2)

    assert pruned == retention.Pruned(done_jobs=7, dead_jobs=0, idempotency_records=5)
    assert _remaining(rt) == {'{"name": "done-fresh"}'}
    assert _keys(rt) == set()


async def test_the_server_sweeps_on_its_own(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as h:
        draft = await h.submit(category="reply", summary="s", body="hello")
        await h.posted(draft["id"])
        delivered = await eventually(lambda: _job_ids(h.rt, "done"))
        h.clock.advance(days=8)
        await eventually(lambda: not (_job_ids(h.rt, "done") & delivered))
        assert (await h.draft(draft["id"]))["id"] == draft["id"]  # the draft itself stays


def _job_ids(rt: Runtime, status: str) -> set[int]:
    with rt.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM outbox_job WHERE status = :s"), {"s": status})
        return {int(i) for (i,) in rows}


def test_db_prune_says_what_it_deleted(db_url: str, tmp_path: Path) -> None:
    env = make_env(db_url, write_config(tmp_path))
    assert run(env, "db", "upgrade").returncode == 0
    engine = create_db_engine(db_url)
    wall = FrozenClock(datetime.now(UTC))  # the CLI keeps the database's time
    with transaction(engine) as session:
        _job(session, "done-8d", "done", age=timedelta(days=8), now_=wall)
        _job(session, "dead-8d", "dead", age=timedelta(days=8), now_=wall)
    engine.dispose()

    done = run(env, "db", "prune")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deleted 1 delivered and 0 dead outbox jobs, 0 idempotency records"


SWEEPERS, OLD_JOBS, RECENT_JOBS, OLD_KEYS = 4, 2_000, 300, 1_000


def _sweep(url: str, config: str, now: datetime, barrier: Any, answers: Any) -> None:
    settings = load_settings(make_env(url, Path(config)))
    engine = create_db_engine(url)
    rt = Runtime(engine=engine, config=settings.config, clock=lambda: now)
    barrier.wait()  # every replica sweeps at the same moment
    try:
        answers.put(retention.prune(rt, chunk=50))
    except Exception as exc:
        answers.put(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    engine.dispose()


def test_replicas_sweeping_at_once_delete_each_row_once_without_errors(
    db_url: str, rt: Runtime, clock: FrozenClock, tmp_path: Path
) -> None:
    agents.add(rt, name="support-bot", categories=["reply"], callback_prefixes=[])
    with transaction(rt.engine) as session:
        agent_id = int(session.execute(sa.text("SELECT id FROM agent")).scalar_one())
        for n in range(OLD_JOBS):
            _job(session, f"old-{n}", "done", age=timedelta(days=8), now_=clock)
        for n in range(RECENT_JOBS):
            _job(session, f"recent-{n}", "done", age=timedelta(days=6), now_=clock)
        _stored_answers(session, agent_id, OLD_KEYS, age=timedelta(days=2), now_=clock)
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(SWEEPERS), context.Queue()
    config = str(tmp_path / "countersign.toml")
    processes = [
        context.Process(target=_sweep, args=(db_url, config, clock(), barrier, answers))
        for _ in range(SWEEPERS)
    ]
    for process in processes:
        process.start()
    results = [answers.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert [r for r in results if not isinstance(r, retention.Pruned)] == []
    assert sum(r.done_jobs for r in results) == OLD_JOBS
    assert sum(r.idempotency_records for r in results) == OLD_KEYS
    assert len(_remaining(rt)) == RECENT_JOBS
    assert _keys(rt) == set()
