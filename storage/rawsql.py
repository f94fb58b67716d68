"""Plain DBAPI statements inside a Session's transaction, for the statements on intake's hot path.

Through SQLAlchemy Core a statement costs ~30 µs of CPU before the driver sees it, plus a few
µs per bound value; the driver itself needs ~3 µs. Intake runs about ten statements per batch,
so they go straight to the driver's cursor, in the transaction the session already began.

Values are stored exactly as an ORM write would store them: times go through the column type's
own bind processor (`RawCursor.time`), once per distinct value instead of once per row.
On PostgreSQL an insert of several rows is one COPY (psycopg's `executemany` costs ~16 µs of CPU
per row, COPY ~5). The PostgreSQL advisory lock of the audit chain is taken here too
(`lock_audit_chain`). SQL is written with `?` placeholders and spelled `%s` for drivers that
want that (psycopg).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from storage.tables import UTCDateTime

_INFO_KEY = "countersign.raw_cursor"


class RawCursor:
    """A DBAPI cursor on a session's connection, with the dialect's spelling of SQL and times."""

    def __init__(self, session: Session) -> None:
        conn = session.connection()  # begins the session's transaction if it has not yet
        self.dialect = conn.dialect
        self._cursor = conn.connection.cursor()
        self._qmark = conn.dialect.paramstyle == "qmark"
        self._time = _time_processor(conn.dialect)
        self._times: dict[datetime, Any] = {}  # rows of a batch share one or two distinct times

    @classmethod
    def of(cls, session: Session) -> RawCursor:
        """The cursor for the session's current transaction, made on first use (finding the
        connection costs ~40 µs; a transaction may run several hot-path statements)."""
        transaction = session.get_transaction()
        kept = session.info.get(_INFO_KEY)
        if kept is not None and transaction is not None and kept[0] is transaction:
            return cast(RawCursor, kept[1])
        cursor = cls(session)  # begins a transaction if none was open
        session.info[_INFO_KEY] = (session.get_transaction(), cursor)
        return cursor

    def close(self) -> None:
        self._cursor.close()

    @property
    def postgresql(self) -> bool:
        return self.dialect.name == "postgresql"

    def time(self, value: datetime) -> Any:
        """An aware datetime in the form its UTCDateTime column stores it (each distinct value is
        converted once per transaction)."""
        stored = self._times.get(value)
        if stored is None:
            stored = self._times[value] = self._time(value)
        return stored

    def insert(self, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows of values in `columns` order, datetimes in their stored form."""
        stored = [[self.time(v) if isinstance(v, datetime) else v for v in row] for row in rows]
        if self.postgresql and len(stored) > 1:
            # COPY: ~5 µs of CPU per row against ~16 for psycopg's executemany (README).
            sql = _copy_sql(table, columns)
            with self._errors(sql, stored), self._cursor.copy(sql) as copy:
                for row in stored:
                    copy.write_row(row)
            return
        self.run_many(_insert_sql(table, columns), stored)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._errors(sql, params):
            self._cursor.execute(self._spelled(sql), params)
            return list(self._cursor.fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._errors(sql, params):
            self._cursor.execute(self._spelled(sql), params)

    def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            with self._errors(sql, rows):
                self._cursor.executemany(self._spelled(sql), rows)

    def _spelled(self, sql: str) -> str:
        return sql if self._qmark else _format_style(sql)

    @contextmanager
    def _errors(self, sql: str, params: Any) -> Iterator[None]:
        """Driver errors leave as SQLAlchemy's (IntegrityError, OperationalError, …), as from
        Session.execute, so callers catch one family whichever way a statement went."""
        dbapi = self.dialect.loaded_dbapi
        try:
            yield
        except dbapi.Error as exc:
            raise DBAPIError.instance(sql, params, exc, dbapi.Error, dialect=self.dialect) from exc


def close_raw_cursor(session: Session) -> None:
    """Close the session's raw cursor, if it made one, and forget it."""
    kept = session.info.pop(_INFO_KEY, None)
    if kept is not None:
        kept[1].close()


@functools.cache
def _format_style(sql: str) -> str:
    return sql.replace("?", "%s")


@functools.cache
def _time_processor(dialect: Dialect) -> Callable[[datetime], Any]:
    processor = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None, "UTCDateTime always converts"
    return processor


def marks(count: int) -> str:
    """`?, ?, ?` for an IN list or a VALUES row of `count` values."""
    return ", ".join("?" * count)


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """INSERT of one row of `columns`."""
    return f'INSERT INTO "{table}" ({_names(columns)}) VALUES ({marks(len(columns))})'


@functools.cache
def _copy_sql(table: str, columns: tuple[str, ...]) -> str:
    return f'COPY "{table}" ({_names(columns)}) FROM STDIN'


def _names(columns: tuple[str, ...]) -> str:
    """Column names, quoted ("key", "before" are keywords)."""
    return ", ".join(f'"{name}"' for name in columns)


AUDIT_CHAIN_LOCK = 7320190  # the PostgreSQL advisory lock key of the audit chain
# Advisory locks belong to the whole database: the second key is the schema, so deployments (and
# test schemas) sharing one database each lock their own chain, not everyone's.
AUDIT_CHAIN_LOCK_KEYS = f"{AUDIT_CHAIN_LOCK}, hashtext(current_schema())"


AUDIT_LOCKED = "countersign.audit_chain_locked"  # session.info key: this transaction holds the lock


def lock_audit_chain(session: Session) -> None:
    """Serialize audit appends until the transaction ends. SQLite already holds the write lock
    (BEGIN IMMEDIATE). Take it before the transaction writes any row (transaction(audited=True)):
    a transaction that holds row locks and then waits here can deadlock with one that holds this
    lock and waits for those rows."""
    if session.info.get(AUDIT_LOCKED):
        return
    db = RawCursor.of(session)
    if db.postgresql:
        db.run(f"SELECT pg_advisory_xact_lock({AUDIT_CHAIN_LOCK_KEYS})")
    session.info[AUDIT_LOCKED] = True
