"""AC-07, at the storage layer: 8 OS processes x 40 reservations of 10.00 against caps of 100
actions and 1,000.00 a day (3.2x the demand the caps allow) grant exactly 100, on both databases;
and the database itself refuses usage above the caps a reservation was granted under (the
`cap_usage_within_cap` CHECK), whatever code path tries it."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import sqlalchemy as sa

from bot.runtime import Runtime
from storage import queries
from storage.db import create_db_engine, transaction

PROCESSES, ATTEMPTS = 8, 40
COUNT_CAP, AMOUNT_CAP, AMOUNT = 100, 100_000, 1_000  # minor units: 1,000.00 and 10.00
DAY = "2026-11-24"


def _reserve(url: str, barrier: Any, answers: Any) -> None:
    engine = create_db_engine(url)
    granted, refused, errors = 0, 0, []
    barrier.wait()  # every process starts at the same moment
    for _ in range(ATTEMPTS):
        try:
            with transaction(engine) as session:
                usage = queries.reserve_cap(
                    session,
                    scope="category:refund",
                    day=DAY,
                    amount_minor=AMOUNT,
                    count_cap=COUNT_CAP,
                    amount_cap_minor=AMOUNT_CAP,
                )
            if usage is None:
                refused += 1
            else:
                granted += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    answers.put((granted, refused, errors))
    engine.dispose()


def test_eight_processes_racing_the_caps_are_granted_exactly_the_cap(db_url: str, rt: Runtime) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_reserve, args=(db_url, barrier, answers)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    results = [answers.get(timeout=180) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert [error for _, _, errors in results for error in errors] == []
    assert sum(granted for granted, _, _ in results) == COUNT_CAP
    assert sum(refused for _, refused, _ in results) == PROCESSES * ATTEMPTS - COUNT_CAP
    with rt.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count_used, amount_used_minor, count_cap, amount_cap_minor FROM cap_usage")
        ).all()
    assert [tuple(row) for row in rows] == [(COUNT_CAP, AMOUNT_CAP, COUNT_CAP, AMOUNT_CAP)]


@pytest.mark.parametrize(
    "overshoot",
    [
        "UPDATE cap_usage SET count_used = count_used + 1",
        "UPDATE cap_usage SET amount_used_minor = amount_used_minor + 1",
        "UPDATE cap_usage SET count_cap = count_cap - 1",
    ],
    ids=["count", "amount", "cap-lowered-under-usage"],
)
def test_the_database_refuses_usage_over_the_granted_caps(rt: Runtime, overshoot: str) -> None:
    with transaction(rt.engine) as session:
        for _ in range(2):
            assert queries.reserve_cap(
                session,
                scope="category:refund",
                day=DAY,
                amount_minor=AMOUNT,
                count_cap=2,
                amount_cap_minor=2 * AMOUNT,
            )
    with pytest.raises(sa.exc.IntegrityError), transaction(rt.engine) as session:
        session.execute(sa.text(overshoot))
    with rt.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT count_used, amount_used_minor FROM cap_usage")).one()
    assert tuple(row) == (2, 2 * AMOUNT)


def test_a_lowered_cap_stops_reservations_and_a_raised_one_is_recorded(rt: Runtime) -> None:
    reserve: dict[str, Any] = {"scope": "category:refund", "day": DAY, "amount_minor": AMOUNT}
    with transaction(rt.engine) as session:
        assert queries.reserve_cap(session, **reserve, count_cap=3, amount_cap_minor=None) == (1, AMOUNT)
        assert queries.reserve_cap(session, **reserve, count_cap=3, amount_cap_minor=None) == (2, 2 * AMOUNT)
        # A human lowers today's cap under the usage: nothing more fits, and nothing breaks.
        assert queries.reserve_cap(session, **reserve, count_cap=1, amount_cap_minor=None) is None
        # Raised again: the next reservation is granted and records the cap it was granted under.
        assert queries.reserve_cap(session, **reserve, count_cap=5, amount_cap_minor=None) == (3, 3 * AMOUNT)
    with rt.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT count_cap, amount_cap_minor FROM cap_usage")).one()
    assert tuple(row) == (5, None)
