"""A database too slow to commit within the ack budget (reliability check AC-13): Slack still gets
its ack in time, the user is told the change is still applying, and the change lands and is
reported once the database lets it through (both databases).

The slowness is a lock the test holds in another process, one the decision must take: SQLite's
write lock (BEGIN IMMEDIATE), PostgreSQL's audit chain lock (storage/rawsql.py). That makes the
order observable without timing anything: the acks come back while the lock is held, so they
cannot have waited for the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from aiohttp import ClientTimeout

from storage import db
from storage.db import normalize_url
from storage.rawsql import AUDIT_CHAIN_LOCK_KEYS
from tests.harness import harness
from tests.processes import Cluster, wait_for


@contextlib.contextmanager
def commits_held(db_url: str) -> Iterator[None]:
    """Hold, from this process, the lock every audited change needs, until the block ends."""
    if db_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(normalize_url(db_url).removeprefix("sqlite:///"), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")
            db.close()
        return
    with psycopg.connect(db_url, autocommit=True) as conn:  # in the test's schema: the lock is per schema
        conn.execute(f"SELECT pg_advisory_lock({AUDIT_CHAIN_LOCK_KEYS})")
        try:
            yield
        finally:
            conn.execute(f"SELECT pg_advisory_unlock({AUDIT_CHAIN_LOCK_KEYS})")


@pytest.fixture
def cluster(db_url: str, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster.running(db_url, tmp_path) as c:
        yield c


def test_acks_go_out_while_the_database_holds_the_commit_and_the_answers_follow(
    cluster: Cluster, db_url: str
) -> None:
    [server] = cluster.start_servers(1)
    token = cluster.add_agent()
    draft_id = cluster.submit(server, token)["id"]
    wait_for(
        lambda: cluster.scalar("SELECT slack_ts FROM draft WHERE id = :id", id=draft_id) is not None,
        what="the draft's post",
    )
    approve, approve_path = cluster.approve_click("U0ALICE", draft_id)
    pause, pause_path = cluster.command_request("U0BOB", "pause support-bot looks wrong")

    with commits_held(db_url):
        status, body = server.post("/slack/events", approve.body, approve.headers)
        assert (status, body) == (200, b"")
        status, body = server.post("/slack/events", pause.body, pause.headers)
        assert status == 200
        assert json.loads(body) == {
            "text": "Still applying it (the database is slow); the answer follows.",
            "response_type": "ephemeral",
        }
        # Acked, and still nothing committed: the lock is held.
        assert cluster.scalar("SELECT status FROM draft WHERE id = :id", id=draft_id) == "pending"
        assert cluster.scalar("SELECT state FROM agent WHERE name = 'support-bot'") == "active"

    answers = cluster.responses([approve_path, pause_path])
    assert answers[approve_path]["text"].startswith("Approved."), answers
    assert "support-bot" in answers[pause_path]["text"] and "paused" in answers[pause_path]["text"].lower()
    assert cluster.scalar("SELECT status FROM draft WHERE id = :id", id=draft_id) in ("approved", "executed")
    assert cluster.scalar("SELECT state FROM agent WHERE name = 'support-bot'") == "paused"


async def test_a_submission_held_past_the_lock_wait_gets_503_and_its_retry_lands_once(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lock held longer than the write may wait (SQLite's busy_timeout, PostgreSQL's lock_timeout):
    # the API fails closed with 503 instead of holding the agent's request for as long as it lasts.
    monkeypatch.setattr(db, "LOCK_WAIT_MS", 1000)
    async with harness(db_url, tmp_path) as h:
        draft = {"category": "refund", "summary": "s", "body": "Refund of $30.", "amount": "30.00"}
        key = {"Idempotency-Key": "held-once"}
        with commits_held(db_url):
            response = await h.client.post("/v1/drafts", json=draft, headers=h.auth() | key)
            assert response.status == 503, await response.text()
            assert (await response.json())["error"]["code"] == "unavailable"
        retried = await h.client.post("/v1/drafts", json=draft, headers=h.auth() | key)
        assert retried.status == 202, await retried.text()
        again = await h.client.post("/v1/drafts", json=draft, headers=h.auth() | key)
        assert (await again.json())["id"] == (await retried.json())["id"]
        with h.rt.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM draft").scalar_one() == 1


@contextlib.contextmanager
def agent_rows_held(db_url: str) -> Iterator[None]:
    """Hold, from this process, a lock every heartbeat needs: SQLite's write lock, or on PostgreSQL
    the agent rows' row locks."""
    if db_url.startswith("sqlite"):
        with commits_held(db_url):
            yield
        return
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT id FROM agent FOR UPDATE")
        try:
            yield
        finally:
            conn.rollback()


WAITING_WRITES = 16  # more than the server's default thread pool holds (bot/threads.py WORK_THREADS)


async def test_reads_answer_while_writes_wait_on_a_held_lock(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writes waiting on the lock fill the default thread pool; the agent API's reads, /metrics and
    # /readyz have threads of their own (bot/threads.py), so they answer while the lock is still held.
    monkeypatch.setattr(db, "LOCK_WAIT_MS", 20_000)
    async with harness(db_url, tmp_path) as h:
        draft = await h.submit(category="reply", summary="s", body="hello")
        with agent_rows_held(db_url):
            beats = [
                asyncio.create_task(h.client.post("/v1/heartbeat", headers=h.auth()))
                for _ in range(WAITING_WRITES)
            ]
            await asyncio.sleep(0.5)  # every heartbeat reaches its thread and waits there
            assert not any(beat.done() for beat in beats)
            reads = [
                h.client.get("/v1/agents/me", headers=h.auth(), timeout=ClientTimeout(total=10)),
                h.client.get(f"/v1/drafts/{draft['id']}", headers=h.auth(), timeout=ClientTimeout(total=10)),
                h.client.get("/metrics", timeout=ClientTimeout(total=10)),
                h.client.get("/readyz", timeout=ClientTimeout(total=10)),
            ]
            for response in await asyncio.gather(*reads):
                assert response.status == 200, (response.url, await response.text())
            assert not any(beat.done() for beat in beats)  # the reads did not wait for the lock
        for beat in await asyncio.gather(*beats):
            assert beat.status == 200, await beat.text()
