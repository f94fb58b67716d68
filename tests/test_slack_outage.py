from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.outbox import NotAttempted
from bot.slack import ChannelPacer
from handlers import ids
from tests.conftest import BOT_TOKEN
from tests.doubles.slack_api import Call
from tests.harness import HELD, Harness, edit_values, eventually, harness


def posts_to(h: Harness, channel: str) -> list[Call]:
    return [c for c in h.slack.calls("chat.postMessage") if c.params.get("channel") == channel and c.ok]


async def test_drafts_wait_out_a_slack_outage_and_are_posted_exactly_once(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path) as h:
        # Faults are scoped to the drafts' channel: a digest due at startup must not take them.
        h.slack.fail("chat.postMessage", status=500, times=4, channel="C0REFUNDS")
        h.slack.fail("conversations.history", status=500, times=1, channel="C0REFUNDS")
        created = [await h.submit(summary=f"outage {n}") for n in range(4)]
        h.slack.fail("chat.postMessage", status=429, times=2, retry_after=1, channel="C0REFUNDS")
        for draft in created:
            await h.posted(draft["id"])
        refund_posts = posts_to(h, "C0REFUNDS")
        ids = [d["id"] for d in created]
        posted_ids = [p.params["metadata"]["event_payload"]["draft_id"] for p in refund_posts]
        assert sorted(posted_ids) == sorted(ids)
        await eventually(
            lambda: any(
                "Slack deliveries recovered" in str(c.params.get("text")) for c in posts_to(h, "C0ALERTS")
            )
        )


async def test_a_post_that_timed_out_after_posting_is_not_posted_again(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as h:
        # Slack posts the message but the answer arrives after the client gave up. (Faults are
        # scoped to the draft's channel: after 09:00 New York time the digest posts at startup.)
        h.slack.fail("chat.postMessage", status="timeout", times=1, delay=HELD, channel="C0REFUNDS")
        created = await h.submit()
        message = await h.posted(created["id"], timeout=30)
        assert message["channel"] == "C0REFUNDS"
        stored = [
            m
            for m in h.slack.messages.values()
            if (m.get("metadata") or {}).get("event_payload", {}).get("draft_id") == created["id"]
        ]
        assert len(stored) == 1


async def test_a_retried_post_finds_its_message_pages_back_in_a_busy_channel(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path) as h:
        h.slack.fail("chat.postMessage", status="timeout", times=1, delay=HELD, channel="C0REFUNDS")
        created = await h.submit()
        await eventually(lambda: h.slack.calls("chat.postMessage"))
        # While the answer is held back, the channel fills up: 450 messages after the draft's.
        others = AsyncWebClient(token=BOT_TOKEN, base_url=h.slack.base_url)
        for n in range(450):
            await others.chat_postMessage(channel="C0REFUNDS", text=f"chatter {n}")
        message = await h.posted(created["id"], timeout=40)
        mine = [
            m
            for m in h.slack.messages.values()
            if (m.get("metadata") or {}).get("event_payload", {}).get("draft_id") == created["id"]
        ]
        assert len(mine) == 1 and mine[0]["ts"] == message["ts"]
        pages = [c for c in h.slack.calls("conversations.history") if c.params.get("channel") == "C0REFUNDS"]
        assert len(pages) == 3  # 451 messages, 200 a page


async def test_a_thread_reply_and_an_alert_that_timed_out_after_posting_are_not_posted_again(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path) as h:
        created = await h.submit()
        message = await h.posted(created["id"])
        # From here on, Slack takes the next post to each channel (the edit's diff in the draft's
        # thread; the pause alert) but its answer comes after the client gave up.
        h.slack.fail("chat.postMessage", status="timeout", times=1, delay=HELD, channel="C0REFUNDS")
        h.slack.fail("chat.postMessage", status="timeout", times=1, delay=HELD, channel="C0ALERTS")
        await h.click("U0BOB", ids.EDIT, created["id"])
        opened = await eventually(lambda: h.slack.calls("views.open"))
        edited = "Hi Dana, we refunded $30.00 to your original card."
        values = edit_values(edited)
        status, _ = await h.submit_view(
            "U0BOB", ids.EDIT_MODAL, opened[0].params["view"]["private_metadata"], values
        )
        assert status == 200
        assert "Paused" in await h.command("U0ALICE", "pause support-bot looks off")

        await eventually(lambda: h.jobs("slack.alert") == h.jobs("slack.thread") == [("done", 2)], timeout=60)
        replies = [m for m in h.slack.messages.values() if m.get("thread_ts") == message["ts"]]
        alerts = [m for m in h.slack.messages.values() if m["channel"] == "C0ALERTS"]
        assert len(replies) == 1 and "edited the draft" in replies[0]["text"], replies
        assert len(alerts) == 1 and "paused *support-bot*" in alerts[0]["text"], alerts
        # The second attempts looked first and found them.
        assert len(h.slack.calls("conversations.replies")) == 1
        assert (
            len([c for c in h.slack.calls("conversations.history") if c.params.get("channel") == "C0ALERTS"])
            == 1
        )


async def test_posting_stays_within_one_message_per_second_per_channel(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as h:
        created = [await h.submit(summary=f"burst {n}", category="reply", amount=None) for n in range(7)]
        for draft in created:
            await h.posted(draft["id"])
        times = sorted(h.slack.post_times["C0SUPPORT"])
        # A burst of 3, then at most one a second: any 4 consecutive posts span at least ~1 s.
        for first, fourth in zip(times, times[3:], strict=False):
            assert fourth - first >= 0.95


async def test_a_stopping_pacer_gives_back_the_posts_still_waiting_for_their_turn() -> None:
    now = [100.0]
    pacer = ChannelPacer(clock=lambda: now[0])
    for _ in range(3):  # the burst goes at once
        await pacer.wait("C0SUPPORT")
    waiting = [asyncio.create_task(pacer.wait("C0SUPPORT")) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)  # their turns are a second or more away
    await pacer.wait("C0OTHER")  # another channel has its own pace
    pacer.stop()
    for task in waiting:
        with pytest.raises(NotAttempted):
            await asyncio.wait_for(task, timeout=10)
    await pacer.wait("C0OTHER")  # a post whose turn has come still goes


async def test_the_pacer_allows_a_burst_of_three_then_one_post_a_second() -> None:
    now = [0.0]
    pacer = ChannelPacer(clock=lambda: now[0])

    async def goes_at_once() -> bool:
        task = asyncio.create_task(pacer.wait("C0SUPPORT"))
        await asyncio.sleep(0.05)  # a wait for its turn is at least a second of real time
        if task.done():
            return True
        pacer.stop()
        with pytest.raises(NotAttempted):
            await task
        pacer._stopping.clear()
        return False

    assert [await goes_at_once() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.0  # one second on: one more post, not a second burst
    assert [await goes_at_once() for _ in range(2)] == [True, False]
    now[0] = 60.0  # a long quiet spell refills the burst, and no more
    assert [await goes_at_once() for _ in range(4)] == [True, True, True, False]


async def test_a_server_stopping_with_a_posting_backlog_hands_it_back_and_the_next_posts_it_once(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path) as first:
        created = [await first.submit(summary=f"burst {n}", category="reply", amount=None) for n in range(8)]
        await eventually(lambda: len(posts_to(first, "C0SUPPORT")) >= 3)
        agent = (first.token, first.callback_secret)
    # The stop did not wait out the pace: posts were left. None was counted as an attempt, and
    # none waits for a lease to run out.
    with first.rt.engine.connect() as conn:
        left = conn.exec_driver_sql(
            "SELECT attempts, lease_until FROM outbox_job WHERE kind = 'slack.render' AND status = 'queued'"
        ).all()
    posted_first = {p.params["metadata"]["event_payload"]["draft_id"] for p in posts_to(first, "C0SUPPORT")}
    assert left and len(posted_first) + len(left) == len(created)
    assert all(row[1] is None for row in left) and {row[0] for row in left} == {0}
    async with harness(db_url, tmp_path, agent=agent) as second:
        rest = [draft["id"] for draft in created if draft["id"] not in posted_first]
        for draft_id in rest:
            await second.posted(draft_id)
        posted_second = [
            p.params["metadata"]["event_payload"]["draft_id"] for p in posts_to(second, "C0SUPPORT")
        ]
    assert sorted(posted_second) == sorted(rest)  # each posted once, by one server or the other


async def test_a_retried_alert_is_posted_anyway_where_the_bot_cannot_read_the_history(
    db_url: str, tmp_path: Path
) -> None:
    # chat:write.public lets the bot post where it is no member; history needs membership.
    async with harness(db_url, tmp_path) as h:
        h.slack.fail("chat.postMessage", status=500, times=3, channel="C0ALERTS")
        h.slack.fail("conversations.history", status=200, error="not_in_channel", times=5, channel="C0ALERTS")
        assert "Paused" in await h.command("U0ALICE", "pause support-bot looks off")

        await eventually(lambda: h.jobs("slack.alert") == [("done", 2)], timeout=30)
        assert any("paused *support-bot*" in a for a in h.alerts())
