"""SQLite only: this process's writers queue on one lock (storage/db.py) before SQLite's own, and
one timeout covers both waits, so a writer queued behind others gives up when its own time is up
instead of waiting out each writer ahead of it. PostgreSQL has no such process lock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage import db

TIMEOUT_MS = 2000


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setattr(db, "LOCK_WAIT_MS", TIMEOUT_MS)
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'writers.db'}")
    with db.transaction(engine) as session:
        session.execute(sa.text("CREATE TABLE t (n INTEGER)"))
    yield engine
    engine.dispose()


def busy_timeout(engine: Engine) -> int:
    with db.transaction(engine) as session:
        return int(session.execute(sa.text("PRAGMA busy_timeout")).scalar_one())


def hold_writer(engine: Engine, seconds: float, release: threading.Event) -> threading.Thread:
    """A thread that takes the process's writer lock, writes, and keeps it for `seconds` or until
    `release` is set."""
    holding = threading.Event()

    def run() -> None:
        with db.transaction(engine) as session:
            session.execute(sa.text("INSERT INTO t VALUES (1)"))
            holding.set()
            release.wait(seconds)

    thread = threading.Thread(target=run)
    thread.start()
    assert holding.wait(10)
    return thread


def test_a_writer_queued_behind_another_waits_only_for_what_is_left_of_its_timeout(engine: Engine) -> None:
    assert busy_timeout(engine) == TIMEOUT_MS
    holder = hold_writer(engine, 0.6, threading.Event())
    left = busy_timeout(engine)  # queued ≥ 0.6 s behind the holder before its own BEGIN
    holder.join()
    assert 0 < left <= TIMEOUT_MS - 600
    assert busy_timeout(engine) == TIMEOUT_MS  # the next, unqueued writer has the whole timeout again


def test_a_writer_gives_up_with_database_locked_when_the_queue_outlasts_its_timeout(engine: Engine) -> None:
    release = threading.Event()
    holder = hold_writer(engine, 30, release)
    try:
        with (
            pytest.raises(sa.exc.OperationalError, match="database is locked"),
            db.transaction(engine) as session,
        ):
            session.execute(sa.text("INSERT INTO t VALUES (2)"))
        assert holder.is_alive()  # it gave up while the holder still held the lock
    finally:
        release.set()
        holder.join()
    with db.transaction(engine, write=False) as session:
        assert session.execute(sa.text("SELECT n FROM t")).scalars().all() == [1]
