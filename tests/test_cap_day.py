from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot import agents, decisions, intake, policy
from bot.errors import DecisionRefused
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.settings import load_settings
from storage import migrate
from storage.db import create_db_engine
from tests.conftest import FrozenClock, make_env, write_config

NEW_YORK, BERLIN = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("zone", "instant", "day"),
    [
        # New York, fall back on 2026-11-01 (a 25-hour day): 04:00Z starts it, 05:00Z the next.
        (NEW_YORK, datetime(2026, 11, 1, 3, 59, 59, 999000, tzinfo=UTC), "2026-10-31"),
        (NEW_YORK, datetime(2026, 11, 1, 4, 0, tzinfo=UTC), "2026-11-01"),
        (NEW_YORK, datetime(2026, 11, 2, 4, 59, 59, 999000, tzinfo=UTC), "2026-11-01"),
        (NEW_YORK, datetime(2026, 11, 2, 5, 0, tzinfo=UTC), "2026-11-02"),
        # New York, spring forward on 2026-03-08 (a 23-hour day).
        (NEW_YORK, datetime(2026, 3, 8, 4, 59, 59, tzinfo=UTC), "2026-03-07"),
        (NEW_YORK, datetime(2026, 3, 9, 3, 59, 59, tzinfo=UTC), "2026-03-08"),
        (NEW_YORK, datetime(2026, 3, 9, 4, 0, tzinfo=UTC), "2026-03-09"),
        # Berlin, 2026-03-29 (23 h) and 2026-10-25 (25 h).
        (BERLIN, datetime(2026, 3, 28, 22, 59, 59, tzinfo=UTC), "2026-03-28"),
        (BERLIN, datetime(2026, 3, 28, 23, 0, tzinfo=UTC), "2026-03-29"),
        (BERLIN, datetime(2026, 3, 29, 21, 59, 59, tzinfo=UTC), "2026-03-29"),
        (BERLIN, datetime(2026, 3, 29, 22, 0, tzinfo=UTC), "2026-03-30"),
        (BERLIN, datetime(2026, 10, 25, 22, 59, 59, tzinfo=UTC), "2026-10-25"),
        (BERLIN, datetime(2026, 10, 25, 23, 0, tzinfo=UTC), "2026-10-26"),
    ],
)
def test_cap_day_is_the_configured_zones_calendar_day(zone: ZoneInfo, instant: datetime, day: str) -> None:
    assert policy.cap_day(instant, zone) == day


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        (NEW_YORK, date(2026, 11, 1), 25),
        (NEW_YORK, date(2026, 3, 8), 23),
        (BERLIN, date(2026, 3, 29), 23),
        (BERLIN, date(2026, 10, 25), 25),
        (BERLIN, date(2026, 6, 1), 24),
    ],
)
def test_day_bounds_are_23_24_or_25_hours(zone: ZoneInfo, day: date, hours: int) -> None:
    start, end = policy.day_bounds(day, zone)
    assert (end - start).total_seconds() == hours * 3600


def test_the_cap_resets_at_local_midnight_across_a_dst_change(rt: Runtime, clock: FrozenClock) -> None:
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    alice = policy.Reviewer("U0ALICE")

    def submit(amount: str) -> str:
        body = {"category": "refund", "summary": "s", "body": f"Refund of ${amount}.", "amount": amount}
        _, created = intake.submit(rt, agent=agent, draft=DraftIn.model_validate(body), key=None, base_url="")
        return str(created["id"])

    def approve(draft_id: str) -> None:
        reviewers = frozenset({"U0ALICE"})
        decisions.approve(
            rt, draft_id=draft_id, version=1, user="U0ALICE", reviewers=reviewers, reviewer=alice
        )

    # 2026-11-01 in New York is 25 hours long; its last second is 04:59:59Z on the 2nd.
    clock.now = datetime(2026, 11, 2, 1, 30, tzinfo=UTC)  # 20:30 local on the 1st; drafts expire after 4 h
    first, second, third = submit("200.00"), submit("200.00"), submit("200.00")
    approve(first)
    approve(second)
    clock.now = datetime(2026, 11, 2, 4, 59, 59, tzinfo=UTC)
    with pytest.raises(DecisionRefused, match=r"exceed today's cap \(2/20 today · 400.00/500.00 USD\)"):
        approve(third)
    clock.now = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
    approve(third)
    with rt.engine.connect() as conn:
        rows = dict(
            (day, amount)
            for day, amount in conn.exec_driver_sql("SELECT day, amount_used_minor FROM cap_usage").all()
        )
    assert rows == {"2026-11-01": 40000, "2026-11-02": 20000}


def test_an_agents_own_daily_cap_holds_across_categories(
    db_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    settings = load_settings(
        make_env(db_url, write_config(tmp_path, extra="\n[agents.support-bot]\ndaily_count_cap = 2\n"))
    )
    engine = create_db_engine(settings.database_url)
    migrate.upgrade(engine)
    rt = Runtime(engine=engine, config=settings.config, clock=clock)
    try:
        agents.add(rt, name="support-bot", categories=["refund", "reply"], callback_prefixes=[])
        agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
        reviewers, alice = frozenset({"U0ALICE"}), policy.Reviewer("U0ALICE")
        ids = []
        for category in ("refund", "reply", "reply"):
            body = {"category": category, "summary": "s", "body": "Hello there."}
            _, created = intake.submit(
                rt, agent=agent, draft=DraftIn.model_validate(body), key=None, base_url=""
            )
            ids.append(created["id"])
        for draft_id in ids[:2]:
            decisions.approve(
                rt, draft_id=draft_id, version=1, user="U0ALICE", reviewers=reviewers, reviewer=alice
            )
        with pytest.raises(DecisionRefused, match=r"support-bot's own daily cap \(2/2 today\)"):
            decisions.approve(
                rt, draft_id=ids[2], version=1, user="U0ALICE", reviewers=reviewers, reviewer=alice
            )
        with engine.connect() as conn:
            used: dict[str, int] = dict(conn.exec_driver_sql("SELECT scope, count_used FROM cap_usage").all())
        assert used == {"category:refund": 1, "category:reply": 1, "agent:support-bot": 2}
    finally:
        engine.dispose()


def test_a_rejection_share_over_the_window_auto_pauses_the_agent(rt: Runtime, clock: FrozenClock) -> None:
    agents.add(rt, name="support-bot", categories=["reply"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    reviewers, alice = frozenset({"U0ALICE"}), policy.Reviewer("U0ALICE")
    # 20 decided drafts (the default window), one decision an hour so the 3-in-10-minutes burst never fires.
    for n in range(20):
        body = {"category": "reply", "summary": f"s{n}", "body": "Hello there."}
        _, created = intake.submit(rt, agent=agent, draft=DraftIn.model_validate(body), key=None, base_url="")
        if n % 10 in (3, 6, 9):  # 6 of 20 rejected: exactly the 30% threshold, reached on the last one
            decisions.reject(
                rt,
                draft_id=created["id"],
                version=1,
                user="U0ALICE",
                reviewers=reviewers,
                reviewer=alice,
                reason="no",
            )
        else:
            decisions.approve(
                rt, draft_id=created["id"], version=1, user="U0ALICE", reviewers=reviewers, reviewer=alice
            )
        paused = agents.me(rt, agent=agent)["state"] == "paused"
        assert paused == (n == 19), n
        clock.advance(hours=1)
    assert "6 of its last 20" in str(agents.me(rt, agent=agent)["reason"])
