from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import col

from bot import audit
from handlers import ids
from storage.tables import AuditEvent, OutboxJob
from tests.conftest import SIGNING_SECRET
from tests.doubles import signing
from tests.harness import USERS, Harness, blocks_text, eventually, harness

WATCHDOG = """
[watchdog]
max_pending = 2
"""
HEARTBEAT = """
[agents.support-bot]
heartbeat_timeout = "1m"
"""
AGENT_CAP = """
[agents.support-bot]
daily_count_cap = 1
"""


@pytest.fixture
async def h(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(db_url, tmp_path, extra_config=WATCHDOG) as value:
        yield value


@pytest.fixture
async def beating(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(db_url, tmp_path, extra_config=HEARTBEAT) as value:
        yield value


# (user, command) -> allowed. Reviewers pull the brake; only admins release it or change caps.
MATRIX = {
    "U0ALICE": {"status", "caps", "pause", "manual"},
    "U0ADMIN": {"status", "caps", "pause", "manual", "resume", "review", "cap"},
    "U0OUT": set(),
    "U0GUEST": set(),
    "U0GONE": set(),
}
COMMANDS = {
    "status": "status",
    "caps": "caps",
    "pause": "pause support-bot testing",
    "resume": "resume support-bot",
    "manual": "manual reply",
    "review": "review reply",
    "cap": "cap refund count=5",
}


@pytest.mark.parametrize("user", sorted(MATRIX))
async def test_permission_matrix_for_every_subcommand(h: Harness, user: str) -> None:
    for verb, text in COMMANDS.items():
        answer = await h.command(user, text)
        if verb in MATRIX[user]:
            assert ":no_entry:" not in answer, (user, verb, answer)
        else:
            assert ":no_entry:" in answer, (user, verb, answer)
    assert "/agent pause" in await h.command(user, "help")
    assert "Unknown command" in await h.command(user, "frobnicate")
    with h.rt.engine.connect() as conn:
        denied = conn.execute(
            sa.select(sa.func.count()).select_from(AuditEvent).where(col(AuditEvent.outcome) == "denied")
        ).scalar_one()
    assert denied == len(COMMANDS) - len(MATRIX[user])


async def test_pause_blocks_approval_and_execution_and_routes_new_drafts_to_manual(h: Harness) -> None:
    pending = await h.submit()
    message = await h.posted(pending["id"])
    answer = await h.command("U0ALICE", "pause support-bot refunds look wrong")
    assert "Paused" in answer
    await eventually(
        lambda: "Agent paused" in blocks_text(h.slack.message(message["channel"], message["ts"]))
    )
    await eventually(lambda: any("paused *support-bot*" in a for a in h.alerts()))

    await h.click("U0BOB", ids.APPROVE, pending["id"])
    await eventually(lambda: any("agent is paused" in t for t in h.ephemeral_texts()))
    assert (await h.draft(pending["id"]))["status"] == "pending"

    later = await h.submit(summary="another")
    assert later["status"] == "manual" and later["reason"] == "agent_paused"
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert me["state"] == "paused" and me["reason"] == "refunds look wrong"

    assert "Only admins" in await h.command("U0ALICE", "resume support-bot")
    assert "Resumed" in await h.command("U0ADMIN", "resume support-bot")
    await h.click("U0BOB", ids.APPROVE, pending["id"])
    await h.status(pending["id"], "executed")


async def test_queued_execution_is_not_claimed_after_a_pause(h: Harness) -> None:
    h.executor.script(503, 503, 503, 503, 503, 503)
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await eventually(lambda: h.executor.requests)
    await h.command("U0ALICE", "pause all")
    with h.rt.engine.connect() as conn:
        paused_at = conn.execute(
            sa.select(col(AuditEvent.at)).where(col(AuditEvent.action) == "agent.paused")
        ).scalar_one()
    seen = len(h.executor.requests)
    h.clock.advance(minutes=5)
    await _settle(h)
    assert len(h.executor.requests) <= seen + 1  # at most the attempt already in flight at the pause
    with h.rt.engine.connect() as conn:
        claims = (
            conn.execute(sa.select(col(OutboxJob.claimed_at)).where(col(OutboxJob.kind) == "executor.call"))
            .scalars()
            .all()
        )
    assert all(claim is None or claim <= paused_at for claim in claims)
    assert (await h.draft(created["id"]))["status"] == "approved"


async def _settle(h: Harness) -> None:
    import asyncio

    await asyncio.sleep(0.5)


async def test_pause_all_covers_agents_registered_later_until_resumed(h: Harness) -> None:
    from bot import agents

    await h.command("U0ALICE", "pause all")
    late = agents.add(h.rt, name="late-bot", categories=["reply"], callback_prefixes=[])
    response = await h.client.post(
        "/v1/drafts",
        json={"category": "reply", "summary": "s", "body": "b"},
        headers={"Authorization": f"Bearer {late.token}"},
    )
    assert (await response.json())["reason"] == "agent_paused"
    await h.command("U0ADMIN", "resume all")
    response = await h.client.post(
        "/v1/drafts",
        json={"category": "reply", "summary": "s", "body": "b"},
        headers={"Authorization": f"Bearer {late.token}"},
    )
    assert (await response.json())["status"] == "pending"


async def test_manual_mode_queues_work_for_humans_with_claim_and_done(h: Harness) -> None:
    await h.command("U0ALICE", "manual reply")
    created = await h.submit(category="reply", amount=None, body="Your order ships Monday.")
    assert created["status"] == "manual" and created["reason"] == "category_manual"
    message = await h.posted(created["id"])
    assert message["channel"] == "C0SUPPORT"
    text = blocks_text(message)
    assert ids.CLAIM in text and ids.DONE in text and "Agent's suggestion" in text
    await h.click("U0CAROL", ids.CLAIM, created["id"])
    await eventually(lambda: "Claimed by" in blocks_text(h.slack.message(message["channel"], message["ts"])))
    await h.click("U0CAROL", ids.DONE, created["id"])
    await h.status(created["id"], "handled")


async def test_time_boxed_manual_mode_reverts_on_time_and_is_announced(h: Harness) -> None:
    answer = await h.command("U0BOB", "manual refund 2h")
    # The end, as Slack shows it in each reader's own time zone.
    token = re.search(r"until <!date\^(\d+)\^\{date_short_pretty\} \{time\}\|[-\d]+ [:\d]+ UTC>", answer)
    assert token and abs(int(token[1]) - (h.clock().timestamp() + 7200)) < 5
    assert token[0] in await h.command("U0BOB", "status")
    assert (await h.submit())["reason"] == "category_manual"
    h.clock.advance(hours=2, seconds=1)
    await eventually(lambda: any("ended on schedule" in a for a in h.alerts()))
    assert (await h.submit(summary="after"))["status"] == "pending"


async def test_approval_over_the_cap_is_refused_with_usage_and_alerts_fire_once(h: Harness) -> None:
    assert "Caps of *refund*" in await h.command("U0ADMIN", "cap refund amount=100.00")
    drafts = [await h.submit(summary=f"r{n}") for n in range(4)]
    for draft in drafts[:3]:
        await h.click("U0ALICE", ids.APPROVE, draft["id"])
        await h.status(draft["id"], "executed")
    await h.click("U0ALICE", ids.APPROVE, drafts[3]["id"])
    await eventually(
        lambda: any("exceed today's cap (3/20 today · 90.00/100.00 USD)" in t for t in h.ephemeral_texts())
    )
    assert (await h.draft(drafts[3]["id"]))["status"] == "pending"
    over = await h.submit(summary="over", amount="20.00", body="Refund of $20.00.")
    assert over["status"] == "manual" and over["reason"] == "over_cap"
    await eventually(lambda: any("passed 80%" in a for a in h.alerts()))
    assert sum("passed 80%" in a for a in h.alerts()) == 1
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert (
        me["categories"]["refund"]["amount_used"] == "90.00" and me["categories"]["refund"]["count_used"] == 3
    )
    assert "90.00/100.00 USD" in await h.command("U0ALICE", "caps")


async def test_a_raised_cap_alerts_again_when_it_is_reached_and_never_says_80_at_100(h: Harness) -> None:
    await h.command("U0ADMIN", "cap refund count=2")
    drafts = [await h.submit(summary=f"r{n}") for n in range(3)]
    for draft in drafts[:2]:
        await h.click("U0ALICE", ids.APPROVE, draft["id"])
        await h.status(draft["id"], "executed")
    await eventually(lambda: [a for a in h.alerts() if "has reached today's cap: 2/2" in a])
    await h.command("U0ADMIN", "cap refund count=3")
    await h.click("U0ALICE", ids.APPROVE, drafts[2]["id"])
    await h.status(drafts[2]["id"], "executed")
    await eventually(lambda: [a for a in h.alerts() if "has reached today's cap: 3/3" in a])
    assert [a for a in h.alerts() if "passed 80%" in a] == []  # 1/2 → 2/2 → 3/3: never at 80–99%


def _events(h: Harness, action: str) -> list[tuple[str, str]]:
    with h.rt.engine.connect() as conn:
        rows = conn.execute(
            sa.text('SELECT actor, "after" FROM audit_event WHERE action = :a ORDER BY seq'), {"a": action}
        ).all()
    return [(str(actor), str(after)) for actor, after in rows]


async def test_review_of_a_category_in_review_mode_changes_and_announces_nothing(h: Harness) -> None:
    await h.command("U0BOB", "manual refund")
    assert "back in review mode" in await h.command("U0ADMIN", "review refund")
    assert "already in review mode. Nothing was changed." in await h.command("U0ADMIN", "review refund")
    assert len(_events(h, "category.review")) == 1
    await eventually(lambda: [a for a in h.alerts() if "returned *refund* to review" in a])
    assert sum("returned *refund* to review" in a for a in h.alerts()) == 1


async def test_resume_and_review_keep_the_reason_given_and_show_it_escaped(h: Harness) -> None:
    await h.command("U0BOB", "pause support-bot")
    await h.command("U0BOB", "manual reply")
    await h.command("U0ADMIN", "resume support-bot fixed the <!channel> prompt")
    await h.command("U0ADMIN", "review reply queue drained")
    assert _events(h, "agent.resumed") == [("slack:U0ADMIN", '{"reason":"fixed the <!channel> prompt"}')]
    assert _events(h, "category.review") == [("slack:U0ADMIN", '{"reason":"queue drained"}')]
    resumed = await eventually(lambda: [a for a in h.alerts() if "resumed *support-bot*" in a])
    assert "fixed the &lt;!channel&gt; prompt" in resumed[0] and "<!channel>" not in resumed[0]
    await eventually(lambda: [a for a in h.alerts() if "to review mode: queue drained" in a])


async def test_a_duration_split_in_two_words_is_refused_not_cut_short(h: Harness) -> None:
    answer = await h.command("U0BOB", "manual reply 1h 30m")
    assert "Write the duration as one word, like `1h30m`" in answer
    assert (await h.submit(category="reply", summary="s", body="b"))["status"] == "pending"


async def test_status_counts_drafts_slack_has_not_taken_after_a_minute(h: Harness) -> None:
    h.slack.fail("chat.postMessage", status=200, error="not_in_channel", channel="C0SUPPORT")
    lost = await h.submit(category="reply", summary="s", body="Your order ships Monday.")
    posted = await h.submit()
    await h.posted(posted["id"])
    await eventually(lambda: [a for a in h.alerts() if "not_in_channel" in a])
    assert "not yet posted" not in await h.command("U0ALICE", "status")  # under a minute: in flight
    h.clock.advance(minutes=2)
    assert "*Also open*: 1 not yet posted to Slack (see the alerts channel)" in await h.command(
        "U0ALICE", "status"
    )
    assert (await h.draft(lost["id"]))["status"] == "pending"


async def test_a_command_with_a_nul_character_changes_nothing(h: Harness) -> None:
    assert "NUL" in await h.command("U0ALICE", "pause support-bot bad\x00reason")
    assert (await h.submit(summary="still flowing"))["status"] == "pending"


async def test_a_cap_override_holds_for_the_day_it_was_set(h: Harness) -> None:
    assert "0/5 today" in await h.command("U0ADMIN", "cap refund count=5")
    assert "0/5 today" in await h.command("U0ALICE", "caps")
    h.clock.advance(days=1)
    assert "0/20 today" in await h.command("U0ALICE", "caps")
    assert "0/7 today" in await h.command("U0ADMIN", "cap refund count=7")


@pytest.mark.parametrize(
    "arg", ["count=\u00b2", "count=\u0663", "count=0", "count=-1", "amount=1e3", "amount="]
)
async def test_a_cap_change_that_is_not_a_plain_number_is_refused(h: Harness, arg: str) -> None:
    answer = await h.command("U0ADMIN", f"cap refund {arg}")
    assert "Caps of" not in answer and ("Not understood" in answer or "amount:" in answer)
    assert "0/20 today" in await h.command("U0ALICE", "caps")


async def test_an_agent_at_its_own_cap_has_new_drafts_routed_to_manual(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path, extra_config=AGENT_CAP) as h:
        first = await h.submit(summary="first")
        await h.click("U0ALICE", ids.APPROVE, first["id"])
        await h.status(first["id"], "executed")
        over = await h.submit(summary="second")
        assert over["status"] == "manual" and over["reason"] == "over_cap"


async def test_rejection_burst_auto_pauses_the_agent_with_links(h: Harness) -> None:
    for n in range(3):
        created = await h.submit(summary=f"bad {n}")
        await h.posted(created["id"])
        await h.click("U0ALICE", ids.REJECT, created["id"])
        opened = await eventually(lambda n=n: h.slack.calls("views.open")[n:])  # type: ignore[misc]  # default-arg lambda: python/mypy#15459
        meta = opened[0].params["view"]["private_metadata"]
        values = {
            ids.REJECT_REASON_BLOCK: {ids.REJECT_REASON_INPUT: {"type": "plain_text_input", "value": "wrong"}}
        }
        await h.submit_view("U0ALICE", ids.REJECT_MODAL, meta, values)
        await h.status(created["id"], "rejected")
    alert = await eventually(lambda: [a for a in h.alerts() if "Auto-paused" in a])
    assert "3 rejections within 10 minutes" in alert[0] and "slack.com/archives/C0REFUNDS" in alert[0]
    assert (await h.submit(summary="next"))["reason"] == "agent_paused"


async def test_missed_heartbeat_marks_the_agent_offline_until_it_checks_in(beating: Harness) -> None:
    h = beating
    await h.client.post("/v1/heartbeat", headers=h.auth())
    h.clock.advance(minutes=2)
    await eventually(lambda: any("missed its heartbeat" in a for a in h.alerts()))
    created = await h.submit()
    assert created["status"] == "manual" and created["reason"] == "agent_offline"
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert (me["state"], me["reason"]) == ("active", "agent_offline")  # DESIGN: active | paused
    await h.client.post("/v1/heartbeat", headers=h.auth())
    await eventually(lambda: any("back online" in a for a in h.alerts()))
    assert (await h.submit(summary="again"))["status"] == "pending"
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert (me["state"], me["reason"]) == ("active", None)


async def test_backlog_watchdog_alerts_once_an_hour(h: Harness) -> None:
    for n in range(3):
        await h.submit(summary=f"wait {n}")
    await eventually(lambda: any("Review backlog" in a for a in h.alerts()))
    await _settle(h)
    assert sum("Review backlog" in a for a in h.alerts()) == 1


async def test_app_home_shows_agents_categories_caps_and_pending(h: Harness) -> None:
    await h.submit()
    await h.post_signed(signing.event_callback(SIGNING_SECRET, signing.app_home_opened_event("U0ALICE")))
    call = (await eventually(lambda: h.slack.calls("views.publish")))[0]
    text = json.dumps(call.params["view"], ensure_ascii=False)
    assert "support-bot" in text and ids.HOME_PAUSE in text and ids.HOME_RESUME not in text
    assert "*refund* — review" in text and "0/20 today" in text and "Pending drafts*: 1" in text


async def test_pause_and_manual_mode_survive_a_restart(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as first:
        await first.command("U0ALICE", "pause support-bot")
        await first.command("U0ALICE", "manual reply")
        agent = (first.token, first.callback_secret)
    async with harness(db_url, tmp_path, agent=agent) as second:
        me = await (await second.client.get("/v1/agents/me", headers=second.auth())).json()
        assert me["state"] == "paused" and me["categories"]["reply"]["mode"] == "manual"
        assert (await second.submit())["reason"] == "agent_paused"
        assert audit.verify(second.rt.engine).ok


async def _home_click(h: Harness, user: str, action: str, value: str) -> int:
    """A signed click on an App Home button; the HTTP status Slack gets."""
    view = {
        "id": "V0HOME",
        "type": "home",
        "callback_id": "",
        "private_metadata": "",
        "state": {"values": {}},
    }
    status, _ = await h.post_signed(
        signing.block_action(SIGNING_SECRET, user_id=user, action_id=action, value=value, view=view)
    )
    return status


@pytest.mark.parametrize(
    ("user", "action", "allowed"),
    [
        ("U0ALICE", ids.HOME_PAUSE, True),
        ("U0OUT", ids.HOME_PAUSE, False),
        ("U0ALICE", ids.HOME_RESUME, False),
        ("U0ADMIN", ids.HOME_RESUME, True),
    ],
)
async def test_app_home_buttons_follow_the_same_permissions(
    h: Harness, user: str, action: str, allowed: bool
) -> None:
    if action == ids.HOME_RESUME:
        await h.command("U0ALICE", "pause support-bot")
    assert await _home_click(h, user, action, "support-bot") == 200
    await eventually(lambda: h.slack.calls("views.publish"))
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    paused_now = me["state"] == "paused"
    expected_paused = (action == ids.HOME_PAUSE) == allowed
    assert paused_now == expected_paused


async def test_app_home_is_closed_to_outsiders_and_open_to_reviewer_group_members(
    db_url: str, tmp_path: Path
) -> None:
    extra = '\n[categories.billing]\nchannel = "C0BILLING"\nreviewer_group = "S0REVIEW"\nai_review = false\n'
    async with harness(db_url, tmp_path, extra_config=extra) as h:
        h.slack.configure(users={**USERS, "U0DAVE": {"name": "dave"}}, usergroups={"S0REVIEW": ["U0DAVE"]})
        await h.submit()
        await h.post_signed(signing.event_callback(SIGNING_SECRET, signing.app_home_opened_event("U0OUT")))
        closed = json.dumps((await eventually(lambda: h.slack.calls("views.publish")))[0].params["view"])
        assert "reviewers and admins only" in closed
        assert "support-bot" not in closed and "Pending drafts" not in closed and ids.HOME_PAUSE not in closed
        assert h.slack.calls("usergroups.users.list")  # the group was read: U0OUT is not in it

        # A member of the billing reviewers' user group gets the state and the Pause button.
        await h.post_signed(signing.event_callback(SIGNING_SECRET, signing.app_home_opened_event("U0DAVE")))
        opened = json.dumps((await eventually(lambda: h.slack.calls("views.publish")[1:]))[0].params["view"])
        assert "support-bot" in opened and ids.HOME_PAUSE in opened and ids.HOME_RESUME not in opened


async def test_a_pause_reason_cannot_ping_the_alerts_channel(h: Harness) -> None:
    answer = await h.command("U0ALICE", "pause support-bot <!channel> <@U0BOB> @here look")
    assert "Paused" in answer
    alert = (await eventually(lambda: [a for a in h.alerts() if "paused" in a]))[0]
    assert "<!channel>" not in alert and "<@U0BOB>" not in alert and "@here" not in alert
    assert "&lt;!channel&gt;" in alert and "@\u200bhere" in alert
    assert "<@U0ALICE>" in alert  # the mention Countersign itself writes stays a mention
    status = await h.command("U0ALICE", "status")
    assert "<!channel>" not in status and "&lt;!channel&gt;" in status


async def test_once_slack_has_the_pause_ack_the_pause_is_in_effect(h: Harness) -> None:
    # No waiting for the private answer: the HTTP acknowledgment itself comes after the commit.
    status, _ = await h.post_signed(
        signing.slash_command(
            SIGNING_SECRET,
            user_id="U0ALICE",
            text="pause support-bot now",
            response_url=h.slack.response_url(kind="commands"),
        )
    )
    assert status == 200
    created = await h.submit()
    assert (created["status"], created["reason"]) == ("manual", "agent_paused")


async def test_once_slack_has_the_approve_ack_the_approval_is_committed(h: Harness) -> None:
    created = await h.submit()
    status, _ = await h.click("U0BOB", ids.APPROVE, created["id"])
    assert status == 200
    assert (await h.draft(created["id"]))["status"] in ("approved", "executed")


async def test_resume_all_lifts_the_pause_of_all_and_names_the_agents_still_paused(h: Harness) -> None:
    assert await h.command("U0ADMIN", "resume all") == "Nothing to resume: `all` is not paused."
    await h.command("U0ALICE", "pause support-bot looked wrong")
    await h.command("U0ALICE", "pause all incident")
    answer = await h.command("U0ADMIN", "resume all")
    assert answer == ":arrow_forward: Resumed *all*. Still paused on their own: *support-bot*.", answer
    assert (await h.submit())["reason"] == "agent_paused"  # its own pause is released by name
    assert "Resumed *support-bot*" in await h.command("U0ADMIN", "resume support-bot")
    assert (await h.submit(summary="again"))["status"] == "pending"
    with h.rt.engine.connect() as conn:
        subjects = conn.exec_driver_sql(
            "SELECT subject FROM audit_event WHERE action = 'agent.resumed' ORDER BY seq"
        ).all()
    assert [row[0] for row in subjects] == ["agent:all", "agent:support-bot"]


async def test_app_home_offers_admins_resume_all_while_all_are_paused(h: Harness) -> None:
    await h.command("U0ALICE", "pause all incident")
    await h.post_signed(signing.event_callback(SIGNING_SECRET, signing.app_home_opened_event("U0ADMIN")))
    view = (await eventually(lambda: h.slack.calls("views.publish")))[0].params["view"]
    buttons = [b["accessory"] for b in view["blocks"] if (b.get("accessory") or {}).get("value") == "all"]
    assert [(b["action_id"], b["text"]["text"]) for b in buttons] == [(ids.HOME_RESUME, "Resume all")]
    assert await _home_click(h, "U0ADMIN", ids.HOME_RESUME, "all") == 200
    assert (await h.submit())["status"] == "pending"


async def _home(h: Harness, user: str) -> str:
    """The App Home view `user` gets when opening it now."""
    before = len(h.slack.calls("views.publish"))
    await h.post_signed(signing.event_callback(SIGNING_SECRET, signing.app_home_opened_event(user)))
    call = (await eventually(lambda: h.slack.calls("views.publish")[before:]))[0]
    return json.dumps(call.params["view"], ensure_ascii=False)


def _count(h: Harness, action: str) -> int:
    with h.rt.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(AuditEvent).where(col(AuditEvent.action) == action)
            ).scalar_one()
        )


async def test_app_home_cap_bar_shows_the_most_used_cap_when_the_amount_is_ahead_of_the_count(
    h: Harness,
) -> None:
    await h.command("U0ADMIN", "cap refund amount=100.00")
    for n in range(3):
        created = await h.submit(summary=f"r{n}")
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        await h.status(created["id"], "executed")
    view = await _home(h, "U0ALICE")
    assert "`█████████░` 90% 3/20 today · 90.00/100.00 USD" in view, view


async def test_while_all_are_paused_each_agent_shows_it_and_home_offers_no_useless_pause(h: Harness) -> None:
    from bot import agents

    agents.add(h.rt, name="other-bot", categories=["reply"], callback_prefixes=[])
    await h.command("U0ALICE", "pause other-bot looked wrong")
    await h.command("U0ALICE", "pause all incident")
    status = await h.command("U0ALICE", "status")
    assert "• *support-bot*: paused (all agents)" in status, status
    assert "• *other-bot*: paused (on its own and with all agents) — looked wrong" in status, status

    reviewer = await _home(h, "U0ALICE")
    assert "*support-bot*: paused (all agents)" in reviewer and ids.HOME_PAUSE not in reviewer
    assert "looked wrong" in reviewer and ids.HOME_RESUME not in reviewer
    admin = json.loads(await _home(h, "U0ADMIN"))
    buttons = {
        b["accessory"]["value"]: b["accessory"]["action_id"] for b in admin["blocks"] if b.get("accessory")
    }
    # Resume all for the pause of all; Resume by name only for the agent paused on its own.
    assert buttons == {"all": ids.HOME_RESUME, "other-bot": ids.HOME_RESUME}, buttons

    await h.command("U0ADMIN", "resume all")
    assert "• *support-bot*: active" in await h.command("U0ALICE", "status")
    assert ids.HOME_PAUSE in await _home(h, "U0ALICE")


async def test_resuming_an_agent_that_is_not_paused_changes_nothing(h: Harness) -> None:
    answer = await h.command("U0ADMIN", "resume support-bot")
    assert answer == "Nothing to resume: *support-bot* is not paused.", answer
    await h.command("U0ALICE", "pause all incident")
    answer = await h.command("U0ADMIN", "resume support-bot")
    assert "is not paused on its own" in answer and "/agent resume all" in answer, answer
    assert _count(h, "agent.resumed") == 0
    await h.command("U0ALICE", "status")  # a round trip for the outbox to deliver any alert
    assert not any("resumed" in a for a in h.alerts())


async def test_pausing_a_paused_agent_keeps_the_first_pause_and_changes_nothing(h: Harness) -> None:
    assert "Paused *support-bot*" in await h.command("U0ALICE", "pause support-bot refunds look wrong")
    await eventually(lambda: any("paused *support-bot*" in a for a in h.alerts()))
    again = await h.command("U0BOB", "pause support-bot second opinion")
    assert again.startswith("*support-bot* is already paused (by <@U0ALICE> since "), again
    assert "refunds look wrong" in again and "Nothing was changed" in again
    me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
    assert me["reason"] == "refunds look wrong"
    assert _count(h, "agent.paused") == 1

    assert "Paused *all*" in await h.command("U0ALICE", "pause all incident")
    again = await h.command("U0BOB", "pause all other")
    assert again.startswith("*all* is already paused (by <@U0ALICE> since "), again
    assert "incident" in again
    assert _count(h, "agent.paused") == 2
    # The alerts go out through the outbox; the refused second pauses queued none.
    await eventually(lambda: h.jobs("slack.alert") == [("done", 1), ("done", 1)])
    assert sum("paused *support-bot*" in a for a in h.alerts()) == 1
    assert sum("paused *all*" in a for a in h.alerts()) == 1


@pytest.mark.parametrize("target", ["support-bot", "all"])
async def test_simultaneous_pauses_and_resumes_each_take_effect_once(h: Harness, target: str) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from bot.control.switches import Switches

    switches = Switches()
    switches.rt = h.rt
    start = Barrier(6)

    def pause(n: int) -> str:
        start.wait()
        return switches.pause(f"U0ALICE{n}", [target, f"reason {n}"])

    def resume(n: int) -> str:
        start.wait()
        return switches.resume("U0ADMIN", [target])

    with ThreadPoolExecutor(6) as pool:
        paused = list(pool.map(pause, range(6)))
        start.reset()
        resumed = list(pool.map(resume, range(6)))
    assert sum(a.startswith(":octagonal_sign: Paused") for a in paused) == 1, paused
    assert sum(a.startswith(":arrow_forward: Resumed") for a in resumed) == 1, resumed
    assert _count(h, "agent.paused") == 1 and _count(h, "agent.resumed") == 1
    assert audit.verify(h.rt.engine).ok


async def test_only_admins_shorten_manual_mode_anyone_may_lengthen_it(h: Harness) -> None:
    assert "manual mode" in await h.command("U0ADMIN", "manual refund")
    refused = await h.command("U0ALICE", "manual refund 5m")
    assert "only admins can shorten it" in refused and "until an admin ends it" in refused
    h.clock.advance(minutes=6)
    assert (await h.submit())["reason"] == "category_manual"  # the admin's open-ended mode holds

    assert "until" in await h.command("U0ADMIN", "manual refund 1h")
    assert "only admins can shorten it" in await h.command("U0BOB", "manual refund 30m")
    assert "until" in await h.command("U0BOB", "manual refund 2h")  # longer: fine
    assert "manual mode:" in await h.command("U0ALICE", "manual refund")  # open-ended: fine
    assert "until" in await h.command("U0ADMIN", "manual refund 1m")  # an admin may shorten it
    h.clock.advance(minutes=2)
    await eventually(lambda: any("ended on schedule" in a for a in h.alerts()))
    assert (await h.submit(summary="after"))["status"] == "pending"
    with h.rt.engine.connect() as conn:
        denied = [
            json.loads(after)["why"]
            for (after,) in conn.execute(
                sa.select(col(AuditEvent.after)).where(col(AuditEvent.action) == "control.manual_denied")
            )
        ]
    assert len(denied) == 2


async def test_a_long_pause_reason_is_cut_where_it_is_shown_and_kept_whole_in_the_audit_log(
    h: Harness,
) -> None:
    reason = "&" * 8001  # escaped, 40,005 characters: more than a Slack message holds
    assert "Paused *support-bot*" in await h.command("U0ALICE", f"pause support-bot {reason}")
    [alert] = await eventually(lambda: [a for a in h.alerts() if "paused *support-bot*" in a])
    assert alert.endswith("&amp;" * 499 + "…")
    again = await h.command("U0BOB", "pause support-bot second")
    assert "&amp;" * 499 + "…). Nothing was changed." in again
    status = await h.command("U0ALICE", "status")
    assert "&amp;" * 199 + "…" in status and "&amp;" * 200 not in status
    with h.rt.engine.connect() as conn:
        after = conn.execute(
            sa.select(col(AuditEvent.after)).where(col(AuditEvent.action) == "agent.paused")
        ).scalar_one()
    assert json.loads(after)["reason"] == reason


async def test_status_counts_what_is_past_review_but_not_finished(h: Harness) -> None:
    h.executor.script(*([503] * 10))
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await eventually(lambda: len(h.executor.requests) >= 1)
    await h.command("U0ALICE", "manual reply")
    await h.submit(category="reply", amount=None, body="Your order ships Monday.")
    status = await h.command("U0ALICE", "status")
    assert "*Also open*: 1 approved, awaiting execution · 1 in the manual queue" in status
