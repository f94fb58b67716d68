"""bot/dbclock.py: replicas keep time by the database's clock (reliability check AC-09)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import Engine

from bot import policy
from bot.dbclock import DatabaseClock
from storage.db import create_db_engine, is_sqlite
from tests.conftest import PG_URL

DAY = 86_400.0


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url, pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def postgresql() -> Iterator[Engine]:
    """The skew tests need a database with a clock of its own: SQLite's is this host's."""
    engine = create_db_engine(PG_URL, pool_size=1)
    yield engine
    engine.dispose()


def test_a_host_in_step_with_the_database_keeps_its_own_time(engine: Engine) -> None:
    clock = DatabaseClock(engine)
    clock.measure(force=True)
    if is_sqlite(engine):
        assert clock.offset == timedelta(0)  # the file is on this host: nothing to ask
    else:
        assert abs(clock.offset) < timedelta(seconds=0.25)  # the same machine's PostgreSQL
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=0.25)


@pytest.mark.parametrize("skew", [-90.0, 90.0, -DAY, DAY])
def test_a_host_whose_clock_is_off_stamps_by_the_databases(postgresql: Engine, skew: float) -> None:
    clock = DatabaseClock(postgresql, host=lambda: time.time() + skew)
    assert abs(clock() - datetime.now(UTC) - timedelta(seconds=skew)) < timedelta(seconds=0.25)
    clock.measure(force=True)
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=0.25)
    # A host a day off still counts caps on the database's business day.
    zone = ZoneInfo("America/New_York")
    assert policy.cap_day(clock(), zone) in {
        policy.cap_day(datetime.now(UTC) + timedelta(seconds=s), zone) for s in (-1, 0, 1)
    }


def test_a_slow_round_trip_leaves_the_offset_alone(postgresql: Engine) -> None:
    ticks = itertools.count(start=time.time() + 3600, step=1.0)  # each reading 1 s after the last
    clock = DatabaseClock(postgresql, host=lambda: next(ticks))
    clock.measure(force=True)
    assert clock.offset == timedelta(0)


def test_measuring_waits_for_the_refresh_interval(postgresql: Engine) -> None:
    skew = [0.0]
    clock = DatabaseClock(postgresql, host=lambda: time.time() + skew[0], refresh=3600)
    clock.measure()
    skew[0] = 90.0
    clock.measure()  # within the interval: kept
    assert abs(clock.offset) < timedelta(seconds=0.25)
    clock.measure(force=True)
    assert abs(clock.offset + timedelta(seconds=90)) < timedelta(seconds=0.25)
