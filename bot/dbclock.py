"""The database's clock: every replica stamps events and computes the cap day by the same clock
(reliability check AC-09), whatever its own host's clock says."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.db import is_sqlite

log = logging.getLogger(__name__)

# A measurement whose round trip took longer than this says little about the offset: skip it.
MAX_ROUND_TRIP = 0.5
# Hosts further apart than this are logged: something (NTP) is wrong on one of them.
WARN_OFFSET = timedelta(seconds=1)


class DatabaseClock:
    """UTC now by the database: this host's clock plus the offset last measured against
    PostgreSQL's `clock_timestamp()` (half the round trip taken as the moment it was read). A
    SQLite file lives on this host, so its clock is this host's: the offset stays zero.

    Calls cost what `datetime.now` costs; `measure` (a query) runs at start and then from the
    schedules loop, at most every `refresh` seconds.
    """

    def __init__(
        self, engine: Engine, *, host: Callable[[], float] = time.time, refresh: float = 60.0
    ) -> None:
        self.engine = engine
        self.host = host
        self.refresh = refresh
        self.offset = timedelta(0)
        self._measured_at: float | None = None

    @classmethod
    def measured(cls, engine: Engine) -> DatabaseClock:
        """A clock already set by the database's (the start of `serve` and of a CLI command)."""
        clock = cls(engine)
        clock.measure(force=True)
        return clock

    def __call__(self) -> datetime:
        return datetime.fromtimestamp(self.host(), UTC) + self.offset

    def measure(self, *, force: bool = False) -> None:
        """Re-read the database's clock if `refresh` has passed (or `force`); errors propagate."""
        if is_sqlite(self.engine):
            return
        started = time.monotonic()
        if not force and self._measured_at is not None and started - self._measured_at < self.refresh:
            return
        before = self.host()
        with self.engine.connect() as conn:
            database: datetime = conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        after = self.host()
        self._measured_at = started
        if after - before > MAX_ROUND_TRIP:
            return
        offset = database - datetime.fromtimestamp((before + after) / 2, UTC)
        if abs(offset) > WARN_OFFSET and abs(offset - self.offset) > WARN_OFFSET / 2:
            log.warning(
                "this host's clock is %.3f s %s the database's; timestamps and cap days follow the database",
                abs(offset.total_seconds()),
                "behind" if offset > timedelta(0) else "ahead of",
            )
        self.offset = offset
