"""Engine and transactions for SQLite and PostgreSQL, created by the app factory or the CLI.

On SQLite every transaction is `BEGIN IMMEDIATE`: it takes the write lock up front, so a
conditional UPDATE is decided once and concurrent writers queue on busy_timeout instead of
failing halfway with 'database is locked'.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from storage.rawsql import close_raw_cursor, lock_audit_chain

# How long a write waits for a lock another connection holds before it fails (and the API answers
# 503): SQLite's busy_timeout, PostgreSQL's lock_timeout.
LOCK_WAIT_MS = 30_000


def normalize_url(url: str) -> str:
    """Map the documented `postgresql://` form onto the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine with the pragmas or pool settings that durability and concurrency need."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"timeout": LOCK_WAIT_MS / 1000, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    event.listen(engine, "connect", _postgresql_on_connect)
    return engine


def _postgresql_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # A lock held elsewhere (a row, the audit chain's advisory lock) fails the write after
    # LOCK_WAIT_MS instead of holding the request, and a worker thread, for as long as it lasts.
    with dbapi_conn.cursor() as cursor:
        cursor.execute(f"SET lock_timeout = {LOCK_WAIT_MS}")
    dbapi_conn.commit()  # the setting outlives this transaction: the pool's rollback keeps it


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide when transactions begin (needed for BEGIN IMMEDIATE).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={LOCK_WAIT_MS}")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Reads take no lock (WAL gives them a snapshot); writes take the write lock at BEGIN.
    if conn.get_execution_options().get(READ_ONLY):
        conn.exec_driver_sql("BEGIN")
        return
    # A writer that queued behind this process's other writers waits on SQLite's busy handler
    # only for what is left of its one timeout, so queued waits do not add up.
    deadline = getattr(_writer_deadline, "at", None)
    left_ms = LOCK_WAIT_MS if deadline is None else int((deadline - time.monotonic()) * 1000)
    if left_ms < LOCK_WAIT_MS - SHORTENED_BY_AT_LEAST_MS:
        _set_busy_timeout(conn, max(left_ms, 1))
        conn.info[SHORTENED] = True
    elif conn.info.pop(SHORTENED, False):
        _set_busy_timeout(conn, LOCK_WAIT_MS)
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _set_busy_timeout(conn: Connection, ms: int) -> None:
    conn.exec_driver_sql(f"PRAGMA busy_timeout={ms}").close()  # it answers with a row: done with it


READ_ONLY = "countersign_read_only"
SHORTENED = "countersign_busy_timeout_shortened"
SHORTENED_BY_AT_LEAST_MS = 100  # shorter waits leave the connection's busy_timeout as it is
# Threads of one process queue here rather than in SQLite's busy handler, which polls and
# sleeps: a FIFO lock hands the write lock over without the busy handler's latency spikes.
_sqlite_writers: dict[int, threading.RLock] = {}
_writer_deadline = threading.local()  # when this thread's outermost write transaction gives up


@contextmanager
def _sqlite_writer(engine: Engine) -> Iterator[None]:
    """Hold this process's writer lock for `engine`, giving up as SQLite's busy handler would.

    One timeout covers the wait here and the wait for SQLite's own lock, so a writer never waits
    longer than `LOCK_WAIT_MS` in all, however many writers queued before it.
    """
    lock = _sqlite_writers.setdefault(id(engine), threading.RLock())
    outermost = getattr(_writer_deadline, "at", None) is None
    timeout = LOCK_WAIT_MS / 1000
    if outermost:
        _writer_deadline.at = time.monotonic() + timeout
    try:
        if not lock.acquire(timeout=timeout):
            raise sa.exc.OperationalError(
                "BEGIN IMMEDIATE",
                None,
                sqlite3.OperationalError(
                    f"database is locked: this process's writers queued for {timeout:g} s"
                ),
            )
        try:
            yield
        finally:
            lock.release()
    finally:
        if outermost:
            _writer_deadline.at = None


@contextmanager
def transaction(engine: Engine, *, write: bool = True, audited: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception.

    `write=False` is for reads: on SQLite they do not queue behind writers. `audited=True` is for
    every transaction that appends to the audit log: it takes the audit chain's lock first, before
    any row is written (the one lock order that cannot deadlock on PostgreSQL).
    """
    if audited:
        with transaction(engine) as session:
            lock_audit_chain(session)
            yield session
        return
    if not write:
        with (
            Session(reader(engine), expire_on_commit=False) as session,
            session.begin(),
            _cursor_closed(session),
        ):
            yield session
        return
    if not is_sqlite(engine):
        with Session(engine, expire_on_commit=False) as session, session.begin(), _cursor_closed(session):
            yield session
        return
    with (
        _sqlite_writer(engine),
        Session(engine, expire_on_commit=False) as session,
        session.begin(),
        _cursor_closed(session),
    ):
        yield session


def reader(engine: Engine) -> Engine:
    """`engine` for reads only: on SQLite its transactions begin without taking the write lock
    (a plain `engine.connect()` there begins with BEGIN IMMEDIATE, as a writer)."""
    return engine.execution_options(**{READ_ONLY: True})


@contextmanager
def _cursor_closed(session: Session) -> Iterator[None]:
    """Close the transaction's raw cursor (storage/rawsql.py) as it ends, in its own thread: kept
    alive by an exception's traceback, it would be freed later in whichever thread drops that,
    and resetting its statement there can break the next user of the pooled connection (SQLite
    then reports "bad parameter or other API misuse")."""
    try:
        yield
    finally:
        close_raw_cursor(session)
