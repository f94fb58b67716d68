from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from slack_sdk.web.async_client import AsyncWebClient

from bot import agents, chart, decisions, digest, intake, policy, slack
from bot.runtime import Runtime
from bot.schemas import DraftIn
from storage.tables import Agent
from tests.conftest import FrozenClock, make_env, write_config
from tests.doubles.slack_api import SlackDouble
from tests.harness import HELD, eventually, harness, installed_days_ago

ALICE = policy.Reviewer("U0ALICE")
BOB = policy.Reviewer("U0BOB")
REVIEWERS = frozenset({"U0ALICE", "U0BOB"})


def submit(rt: Runtime, agent: Agent, **fields: str) -> str:
    body = {
        "category": "refund",
        "summary": "s",
        "body": "Refund of $30.00 issued.",
        "amount": "30.00",
    } | fields
    _, created = intake.submit(rt, agent=agent, draft=DraftIn.model_validate(body), key=None, base_url="")
    return str(created["id"])


def script_day(rt: Runtime, clock: FrozenClock) -> None:
    """A day of events in America/New_York: 2026-11-24 runs 05:00Z to 05:00Z next day."""
    agents.add(rt, name="support-bot", categories=["refund", "reply"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    clock.now = datetime(2026, 11, 24, 4, 59, tzinfo=UTC)  # 23:59 the day before: not counted
    submit(rt, agent, summary="yesterday")
    clock.now = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    approved = submit(rt, agent)
    edited = submit(rt, agent)
    rejected = [submit(rt, agent), submit(rt, agent)]
    clock.advance(minutes=10)
    decisions.approve(rt, draft_id=approved, version=1, user="U0ALICE", reviewers=REVIEWERS, reviewer=ALICE)
    clock.advance(minutes=20)
    decisions.approve(
        rt,
        draft_id=edited,
        version=1,
        user="U0BOB",
        reviewers=REVIEWERS,
        reviewer=BOB,
        edited_body="Better reply",
    )
    for draft_id in rejected:
        decisions.reject(
            rt,
            draft_id=draft_id,
            version=1,
            user="U0ALICE",
            reviewers=REVIEWERS,
            reviewer=ALICE,
            reason="wrong order",
        )
    submit(rt, agent, summary="waits")
    clock.now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    assert decisions.expire_due(rt) == 1  # the 04:59Z draft expired at 08:59Z; "waits" has until 18:30Z
    clock.now = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)


def test_digest_numbers_match_a_scripted_day(rt: Runtime, clock: FrozenClock) -> None:
    script_day(rt, clock)
    built = digest.build(rt, date(2026, 11, 24))
    line = built.lines[("support-bot", "refund")]
    assert line.submitted == 5
    assert (line.approved, line.edited, line.rejected) == (2, 1, 2)
    assert line.reasons == {"wrong order": 2}
    assert line.expired == 1  # the draft from 23:59 the day before expired during this day
    assert sorted(line.decision_seconds) == [600.0, 1800.0, 1800.0, 1800.0]
    assert built.caps == ["refund: 2/20 · 60.00/500.00 USD", "reply: 0/300"]
    assert built.pending == 1
    assert built.head[0] > 0
    text = built.text()
    assert "approved 2 (edited 1, edit rate 50%)" in text and "rejected 2" in text
    assert f"#{built.head[0]} {built.head[1]}" in text


def test_digest_of_a_zero_activity_day_says_so(rt: Runtime) -> None:
    built = digest.build(rt, date(2026, 11, 20))
    assert built.lines == {} and built.pending == 0
    assert "No drafts were submitted or decided." in built.text()


def test_digest_day_follows_the_local_calendar_across_dst(rt: Runtime, clock: FrozenClock) -> None:
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    # 2026-11-01 in New York is 25 hours long: 04:00Z to 05:00Z the next day.
    for at in (datetime(2026, 11, 1, 4, 0, tzinfo=UTC), datetime(2026, 11, 2, 4, 59, tzinfo=UTC)):
        clock.now = at
        submit(rt, agent)
    clock.now = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
    submit(rt, agent)
    assert digest.build(rt, date(2026, 11, 1)).lines[("support-bot", "refund")].submitted == 2
    assert digest.build(rt, date(2026, 11, 2)).lines[("support-bot", "refund")].submitted == 1


def test_digest_is_claimed_once_per_day_and_marked_late_when_overdue(rt: Runtime, clock: FrozenClock) -> None:
    installed_days_ago(rt, datetime(2026, 11, 24, 13, 59, tzinfo=UTC))
    clock.now = datetime(2026, 11, 24, 13, 59, tzinfo=UTC)  # 08:59 local: not due
    assert digest.claim_due(rt, worker="a") is None
    clock.now = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    assert digest.claim_due(rt, worker="a") == (date(2026, 11, 23), False)
    assert digest.claim_due(rt, worker="b") is None
    clock.now = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)  # down over 09:00: sent on start, late
    assert digest.claim_due(rt, worker="b") == (date(2026, 11, 24), True)


def test_a_new_installation_posts_no_digest_for_the_day_before_it_existed(
    rt: Runtime, clock: FrozenClock
) -> None:
    # First start at 11:00 New York time, after the digest's 09:00: yesterday predates it.
    clock.now = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
    assert digest.claim_due(rt, worker="a") is None
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    assert digest.claim_due(rt, worker="a") is None  # the audit log begins today
    with rt.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM schedule_claim").scalar_one() == 0
    clock.now = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)  # the next morning: its first day is due
    assert digest.claim_due(rt, worker="a") == (date(2026, 11, 24), False)
    assert digest.claim_missed(rt, worker="a") == []


def test_the_digest_lists_every_pause_and_counts_failures_and_unknown_outcomes(
    rt: Runtime, clock: FrozenClock
) -> None:
    from bot.control import Control

    script_day(rt, clock)
    control = Control(rt=rt, directory=None)  # type: ignore[arg-type]  # pause and resume read no directory
    control.pause("U0ALICE", ["support-bot", "refunds", "look", "<!channel>", "wrong"])
    clock.advance(minutes=5)
    control.resume("U0ADMIN", ["support-bot"])
    clock.advance(minutes=5)
    control.manual("U0ADMIN", ["reply"])
    clock.advance(minutes=30)
    control.review("U0ADMIN", ["reply"])
    with rt.engine.begin() as conn:  # two of the day's approvals ended badly at the executor
        ids = [
            row[0]
            for row in conn.exec_driver_sql("SELECT id FROM draft WHERE status = 'approved' ORDER BY id")
        ]
        conn.exec_driver_sql(f"UPDATE draft SET status = 'failed' WHERE id = '{ids[0]}'")
        conn.exec_driver_sql(f"UPDATE draft SET status = 'needs_reconciliation' WHERE id = '{ids[1]}'")
    assert digest.people_of(rt, date(2026, 11, 24)) == ["U0ADMIN", "U0ALICE"]
    built = digest.build(rt, date(2026, 11, 24), people={"U0ALICE": "alice <b>"})
    line = built.lines[("support-bot", "refund")]
    assert (line.failed, line.needs_reconciliation) == (1, 1)
    text = built.text()
    # Named, never @-mentioned (a mention would notify them every morning); an unknown name is the id.
    # Times are the configured zone's (America/New_York), as the day is.
    assert "support-bot paused at 11:00 EST by @alice &lt;b&gt;: refunds look &lt;!channel&gt; wrong" in text
    assert "support-bot resumed at 11:05 EST by U0ADMIN" in text
    assert "reply manual from 11:10 EST by U0ADMIN" in text
    assert "reply back to review at 11:40 EST by U0ADMIN" in text
    assert "*Still pending*: 1 (oldest since 2026-11-24 09:30 EST)" in text
    assert "<!channel>" not in text and "<@" not in text


def test_a_digest_no_replica_posted_is_posted_late_but_a_new_install_posts_no_backlog(
    rt: Runtime, clock: FrozenClock
) -> None:
    clock.now = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)
    installed_days_ago(rt, clock.now)
    assert digest.claim_missed(rt, worker="a") == []  # no digest ever: a new installation
    assert digest.claim_due(rt, worker="a") == (date(2026, 11, 21), False)
    assert digest.claim_missed(rt, worker="a") == []  # nothing before the first digest
    # Every replica was down from before 09:00 on the 23rd until the 25th.
    clock.now = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
    assert digest.claim_due(rt, worker="a") == (date(2026, 11, 24), True)
    assert digest.claim_missed(rt, worker="a") == [date(2026, 11, 22), date(2026, 11, 23)]
    assert digest.claim_missed(rt, worker="b") == []
    with rt.engine.connect() as conn:
        jobs = conn.exec_driver_sql("SELECT payload FROM outbox_job WHERE kind = 'slack.digest'").all()
    days = sorted(json.loads(row[0])["day"] for row in jobs)
    assert days == ["2026-11-21", "2026-11-22", "2026-11-23", "2026-11-24"]


def test_trend_chart_is_a_valid_png() -> None:
    png = chart.bar_chart([(3, 1, 0), (0, 0, 0), (5, 2, 4)], width=100, height=50)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (100, 50)
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == 50 * (1 + 100 * 3)


def digest_print(env: dict[str, str], when: str) -> subprocess.CompletedProcess[str]:
    """`countersign digest --date WHEN --print`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bot", "digest", "--date", when, "--print"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_digest_print_cli_prints_the_same_numbers(
    db_url: str, tmp_path: Path, rt: Runtime, clock: FrozenClock
) -> None:
    script_day(rt, clock)
    env = make_env(db_url, write_config(tmp_path))
    expected = digest.build(rt, date(2026, 11, 24)).text()
    # An ISO 8601 datetime names its day in the configured zone (New York: 03:00Z is the 24th).
    for when in ("2026-11-24", "2026-11-24T12:00:00", "2026-11-25T03:00:00Z"):
        result = digest_print(env, when)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected.strip(), when


def test_digest_of_a_day_that_has_not_begun_exits_2(db_url: str, tmp_path: Path) -> None:
    result = digest_print(make_env(db_url, write_config(tmp_path)), "2999-01-01")
    assert result.returncode == 2 and result.stdout == ""
    assert "2999-01-01 has not begun yet in America/New_York" in result.stderr


async def test_scheduled_digest_is_posted_once_with_its_chart(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path, digest_due=True) as h:
        await h.submit()
        local = h.clock().astimezone(h.rt.config.timezone)
        due = datetime.combine(local.date(), h.rt.config.digest_at, tzinfo=h.rt.config.timezone)
        if local < due:
            h.clock.offset += due - local
        posts = await eventually(
            lambda: [c for c in h.slack.calls("chat.postMessage") if c.params.get("channel") == "C0AUDIT"]
        )
        await eventually(lambda: h.slack.calls("files.completeUploadExternal"))
        assert "Audit chain head" in posts[0].params["text"]
        h.clock.advance(minutes=30)
        await eventually(lambda: len(h.slack.calls("files.completeUploadExternal")) == 1)
        assert (
            len([c for c in h.slack.calls("chat.postMessage") if c.params.get("channel") == "C0AUDIT"]) == 1
        )


async def test_the_posted_digest_names_who_paused_by_their_slack_name(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path, digest_due=True) as h:
        assert "Paused" in await h.command("U0ALICE", "pause support-bot checking refunds")
        assert "Resumed" in await h.command("U0ADMIN", "resume support-bot checked")
        local = h.clock().astimezone(h.rt.config.timezone)
        tomorrow = datetime.combine(
            local.date() + timedelta(days=1), h.rt.config.digest_at, tzinfo=local.tzinfo
        )
        h.clock.offset += tomorrow - local + timedelta(minutes=1)  # the next morning: today's digest
        header = f"*Countersign daily digest — {local.date().isoformat()}*"
        posts = await eventually(
            lambda: [
                c.params["text"]
                for c in h.slack.calls("chat.postMessage")
                if c.params.get("channel") == "C0AUDIT" and c.params.get("text", "").startswith(header)
            ]
        )
        assert "support-bot paused at" in posts[0] and "by @alice: checking refunds" in posts[0]
        assert "support-bot resumed at" in posts[0] and "by @admin" in posts[0]
        assert "<@" not in posts[0]


async def test_a_retried_digest_job_posts_only_what_slack_does_not_show_yet(
    db_url: str, tmp_path: Path
) -> None:
    """Slack takes the text but the answer is lost (attempt 1), then takes the chart and the answer
    is lost again (attempt 2): the third attempt finds both in the channel and posts nothing."""
    async with harness(db_url, tmp_path, digest_due=True) as h:
        h.slack.fail("chat.postMessage", status="timeout", times=1, delay=HELD, channel="C0AUDIT")
        h.slack.fail("files.completeUploadExternal", status="timeout", times=1, delay=HELD)
        local = h.clock().astimezone(h.rt.config.timezone)
        due = datetime.combine(local.date(), h.rt.config.digest_at, tzinfo=h.rt.config.timezone)
        if local < due:
            h.clock.offset += due - local

        await eventually(lambda: h.jobs("slack.digest") == [("done", 3)], timeout=60)
        texts = [m for m in h.slack.messages.values() if m["channel"] == "C0AUDIT" and m.get("metadata")]
        charts = [m for m in h.slack.messages.values() if m["channel"] == "C0AUDIT" and m.get("files")]
        assert len(texts) == 1 and texts[0]["text"].startswith("*Countersign daily digest")
        assert [f["name"] for m in charts for f in m["files"]] == [
            f"countersign-trend-{texts[0]['metadata']['event_payload']['day']}.png"
        ]
        # Each part was sent once; the third attempt only read the channel's history.
        assert (
            len([c for c in h.slack.calls("chat.postMessage") if c.params.get("channel") == "C0AUDIT"]) == 1
        )
        assert len(h.slack.calls("files.completeUploadExternal")) == 1
        assert len(h.slack.calls("conversations.history")) == 2


def busy_digest(pairs: int, pauses: int) -> digest.Digest:
    """A digest of a busy day: `pairs` agent · category parts with rejection reasons, `pauses` pauses."""
    lines = {}
    for n in range(pairs):
        line = digest.Line(submitted=40, approved=30, edited=5, rejected=10, executed=29, failed=1)
        line.reasons.update({f"reason {k} of agent {n} " + "&" * 60: 3 for k in range(3)})
        line.decision_seconds.extend([60.0, 600.0])
        lines[(f"agent-{n:02d}", f"category-{n % 7}")] = line
    return digest.Digest(
        day=date(2026, 11, 24),
        lines=lines,
        caps=[f"category-{n}: 20/300 today" for n in range(7)],
        pauses=[f"agent-{n:02d} paused at 11:00 EST by @alice: " + "why " * 40 for n in range(pauses)],
        manual_periods=[],
        pending=3,
        oldest_pending=None,
        head=(1234, "ab" * 32),
        trend=[("2026-11-24", 1, 0, 0)] * 7,
    )


def test_the_slack_digest_of_a_busy_day_fits_one_message_and_says_what_it_left_out() -> None:
    sections, left_out = busy_digest(60, 40).slack_sections(10_000)
    assert sum(len(s) for s in sections) <= 10_000 and all(len(s) <= 2900 for s in sections)
    shown = "\n".join(sections)
    assert shown.startswith("*Countersign daily digest — 2026-11-24*")
    assert "*agent-00 · category-0*" in shown and "*agent-59 · category-3*" not in shown
    assert "more agent · category parts in the attached file" in shown
    assert "more lines in the attached file" in shown  # the pauses, cut by whole lines
    assert "*Caps*" in shown and "*Still pending*: 3" in shown
    assert shown.endswith(f"*Audit chain head*: #1234 {'ab' * 32}")
    assert left_out > 0
    # A quiet day is shown whole, exactly as `digest --print` prints it.
    quiet = busy_digest(3, 1)
    sections, left_out = quiet.slack_sections(10_000)
    assert left_out == 0 and "\n".join(sections) == quiet.text()


async def test_a_busy_digest_is_posted_with_its_whole_text_as_a_file() -> None:
    async with SlackDouble(channels={"C0AUDIT"}) as double:
        client = AsyncWebClient(token="xoxb-test", base_url=double.base_url)
        busy = busy_digest(60, 40)
        await slack.post_digest(client, "C0AUDIT", busy)  # the double refuses msg_blocks_too_long
        [post] = double.calls("chat.postMessage")
        assert "Audit chain head" in json.dumps(post.params["blocks"])
        names = {record["name"]: record["id"] for record in double.files.values()}
        assert set(names) == {"countersign-digest-2026-11-24.txt", "countersign-trend-2026-11-24.png"}
        assert double.uploads[names["countersign-digest-2026-11-24.txt"]].decode() == busy.text()
        double.reset()
        await slack.post_digest(client, "C0AUDIT", busy_digest(3, 1))
        assert {record["name"] for record in double.files.values()} == {"countersign-trend-2026-11-24.png"}
