"""Slack requests at the edges: failures after the ack, another workspace, Slack's probe, modal
field errors and exclusive claims (found by driving the server as Slack does)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import col

from bot import audit
from bot.app import Options, create_app
from bot.settings import load_settings
from handlers import ids
from storage.tables import AuditEvent, Decision
from tests.conftest import SIGNING_SECRET, make_env, write_config
from tests.doubles import signing
from tests.harness import Harness, blocks_text, edit_values, eventually, harness


@pytest.fixture
async def h(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(db_url, tmp_path) as value:
        yield value


def audit_actions(h: Harness, action: str) -> list[dict[str, Any]]:
    with h.rt.engine.connect() as conn:
        rows = conn.execute(
            sa.select(col(AuditEvent.actor), col(AuditEvent.after)).where(col(AuditEvent.action) == action)
        ).all()
    return [{"actor": actor, "after": json.loads(after)} for actor, after in rows]


async def test_a_modal_slack_will_not_open_is_answered_200_and_explained(h: Harness) -> None:
    # Bolt drops an ack already given when its listener then raises, and answers 404 after 3 s.
    created = await h.submit()
    h.slack.fail("views.open", status=200, error="expired_trigger_id")
    status, _ = await h.click("U0ALICE", ids.EDIT, created["id"])
    assert status == 200
    told = await eventually(lambda: [t for t in h.ephemeral_texts() if "did not open the form" in t])
    assert "expired_trigger_id" in told[0]
    assert (await h.draft(created["id"]))["status"] == "pending"


async def test_a_pause_from_app_home_whose_dm_fails_is_still_acknowledged(h: Harness) -> None:
    h.slack.fail("chat.postMessage", status=200, error="channel_not_found", channel="U0ALICE")
    status, _ = await h.post_signed(
        signing.interactive(
            SIGNING_SECRET,
            signing.block_action_payload(
                user_id="U0ALICE",
                action_id=ids.HOME_PAUSE,
                value="support-bot",
                view={"id": "V0HOME", "type": "home"},
            ),
        )
    )
    assert status == 200
    assert (await h.submit())["reason"] == "agent_paused"


async def test_a_bad_amount_in_the_edit_modal_keeps_the_modal_open_on_that_field(h: Harness) -> None:
    created = await h.submit()
    await h.click("U0BOB", ids.EDIT, created["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    meta = opened[0].params["view"]["private_metadata"]
    for amount, why in [
        ("abc", "decimal string"),
        ("0", "greater than zero"),
        ("50.001", "decimal places"),
        ("301.00", "limit of 300.00"),
    ]:
        status, text = await h.submit_view("U0BOB", ids.EDIT_MODAL, meta, edit_values("Edited.", amount))
        assert status == 200
        answer = json.loads(text)
        assert answer["response_action"] == "errors" and why in answer["errors"][ids.EDIT_AMOUNT_BLOCK]
    assert json.loads(meta)["category"] == "refund"  # checked before the ack, without a database read
    legacy = json.dumps({k: v for k, v in json.loads(meta).items() if k != "category"})
    status, text = await h.submit_view("U0BOB", ids.EDIT_MODAL, legacy, edit_values("Edited.", "301.00"))
    assert json.loads(text)["errors"][ids.EDIT_AMOUNT_BLOCK].endswith("limit of 300.00.")
    view = await h.draft(created["id"])
    assert view["status"] == "pending" and view["decisions"] == [] and view["amount"] == "30.00"
    status, text = await h.submit_view("U0BOB", ids.EDIT_MODAL, meta, edit_values("Edited.", "25.00"))
    assert status == 200 and text == ""
    assert (await h.status(created["id"], "executed"))["approved_body"] == "Edited."


async def test_a_manual_item_is_claimed_by_one_person_only(h: Harness) -> None:
    await h.command("U0ALICE", "manual reply")
    created = await h.submit(category="reply", amount=None, body="Your order ships Monday.")
    assert created["status"] == "manual"
    before = len(h.ephemeral_texts())
    await h.click("U0CAROL", ids.CLAIM, created["id"])
    await h.click("U0BOB", ids.CLAIM, created["id"])
    await h.click("U0CAROL", ids.CLAIM, created["id"])
    # Each answer follows its click's ack: they may reach Slack in any order.
    texts = await eventually(
        lambda: h.ephemeral_texts()[before:] if len(h.ephemeral_texts()) >= before + 3 else None
    )
    assert sorted(texts) == sorted(
        [
            "Claimed: it's yours.",
            "<@U0CAROL> has already claimed this item.",
            "You have already claimed this item.",
        ]
    )
    with h.rt.engine.connect() as conn:
        claims = conn.execute(
            sa.select(col(Decision.by)).where(
                col(Decision.draft_id) == created["id"], col(Decision.action) == "claim"
            )
        ).all()
    assert [row[0] for row in claims] == ["U0CAROL"]
    assert len(audit_actions(h, "manual.claimed")) == 1
    message = await h.posted(created["id"])
    assert blocks_text(h.slack.message(message["channel"], message["ts"])).count("Claimed by") == 1
    await h.click("U0BOB", ids.DONE, created["id"])  # anyone on the team may still close it
    await h.status(created["id"], "handled")


def _foreign_click(payload: dict[str, Any], foreign: str) -> None:
    if foreign == "workspace":
        payload["team"] = {"id": "T0OTHER", "domain": "other"}
        payload["user"]["team_id"] = "T0OTHER"
    else:
        payload["api_app_id"] = "A0OTHER"


@pytest.mark.parametrize("surface", ["click", "command"])
@pytest.mark.parametrize(
    ("foreign", "actor"), [("workspace", "slack-team:T0OTHER"), ("app", "slack-app:A0OTHER")]
)
async def test_a_signed_request_from_another_workspace_or_app_changes_nothing_and_is_audited(
    h: Harness, surface: str, foreign: str, actor: str
) -> None:
    # AC-16: the same signing secret, but another workspace's team_id or another app's api_app_id.
    created = await h.submit()
    await h.posted(created["id"])
    if surface == "click":
        payload = await h.click_payload("U0ALICE", ids.APPROVE, created["id"])
        _foreign_click(payload, foreign)
        request = signing.interactive(SIGNING_SECRET, payload)
    else:
        fields = signing.slash_command_fields(
            user_id="U0ADMIN", text="pause all", response_url=h.slack.response_url(kind="commands")
        )
        key, value = ("team_id", "T0OTHER") if foreign == "workspace" else ("api_app_id", "A0OTHER")
        fields[key] = value
        request = signing._signed_form(SIGNING_SECRET, urllib.parse.urlencode(fields), None)
    status, _ = await h.post_signed(request)
    assert status == 401
    assert (await h.draft(created["id"]))["status"] == "pending"
    assert (await h.submit(summary="after"))["status"] == "pending"  # not paused
    denied = audit_actions(h, "slack.auth_denied")
    assert len(denied) == 1 and denied[0]["actor"] == actor
    assert actor.partition(":")[2] in denied[0]["after"]["why"]
    assert audit.verify(h.rt.engine).ok
    assert await h.click("U0ALICE", ids.APPROVE, created["id"]) == (200, "")  # this app's own still act
    await h.status(created["id"], "executed")


async def test_requests_still_act_while_slack_cannot_say_the_apps_id(h: Harness) -> None:
    h.slack.fail("bots.info", status=500, times=1)
    assert "Agents" in await h.command("U0ALICE", "status")


async def test_slacks_unsigned_ssl_check_probe_gets_200_and_acts_on_nothing(h: Harness) -> None:
    response = await h.client.post(
        "/slack/events",
        data="ssl_check=1&token=XXYYZZ",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200 and await response.text() == ""
    assert audit_actions(h, "slack.auth_denied") == []
    # Anything else unsigned is still refused.
    response = await h.client.post(
        "/slack/events",
        data="ssl_check=0&command=%2Fagent&text=pause+all",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 401


async def test_a_first_approvers_edit_keeps_the_agents_own_text_as_body(h: Harness) -> None:
    original = "Refund of $250.00 issued."
    created = await h.submit(amount="250.00", body=original)
    await h.click("U0ALICE", ids.EDIT, created["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    meta = opened[0].params["view"]["private_metadata"]
    edited = "Refund of $240.00 issued to your original card."
    status, _ = await h.submit_view("U0ALICE", ids.EDIT_MODAL, meta, edit_values(edited, "240.00"))
    assert status == 200
    await eventually(lambda: any("First approval recorded" in t for t in h.ephemeral_texts()))
    pending = await h.draft(created["id"])
    assert pending["status"] == "pending" and pending["body"] == original and pending["edited"] is True
    assert pending["approved_body"] is None
    message = await h.posted(created["id"])

    def card_shows_both() -> str | None:
        text = blocks_text(h.slack.message(message["channel"], message["ts"]))
        return text if "As edited by the first approver" in text else None

    text = await eventually(card_shows_both)
    assert text.index(original) < text.index("As edited by the first approver") < text.index(edited)

    await h.click("U0BOB", ids.APPROVE, created["id"], version=2)  # the edited version is version 2
    done = await h.status(created["id"], "executed")
    assert done["body"] == original and done["approved_body"] == edited and done["amount"] == "240.00"
    assert [(d["action"], d["by"]) for d in done["decisions"]] == [("edit", "U0ALICE"), ("approve", "U0BOB")]
    assert h.executor.requests[0].json["approved_body"] == edited


async def test_a_click_refused_by_the_cap_refreshes_the_cards_usage(h: Harness) -> None:
    first = await h.submit(amount="200.00", body="Refund of $200.00 issued.")
    second = await h.submit(amount="200.00", body="Refund of $200.00 issued.", summary="two")
    third = await h.submit(amount="150.00", body="Refund of $150.00 issued.", summary="three")
    message = await h.posted(third["id"])
    assert "0/20 today" in blocks_text(message)  # posted before anything was approved
    for created in (first, second):
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        await h.status(created["id"], "executed")
    await h.click("U0ALICE", ids.APPROVE, third["id"])
    await eventually(lambda: [t for t in h.ephemeral_texts() if "would exceed today's cap" in t])
    assert (await h.draft(third["id"]))["status"] == "pending"
    await eventually(
        lambda: "2/20 today" in blocks_text(h.slack.message(message["channel"], message["ts"])) or None
    )


async def test_a_server_without_a_signing_secret_starts_and_refuses_every_http_slack_request(
    db_url: str, tmp_path: Path
) -> None:
    # Socket Mode needs no signing secret; the HTTP endpoint then has nothing to check against.
    env = make_env(db_url, write_config(tmp_path))
    del env["SLACK_SIGNING_SECRET"]
    app = create_app(load_settings(env), Options(run_workers=False))
    async with TestClient(TestServer(app)) as client:
        for secret in ("", "x"):
            request = signing.slash_command(secret or "anything", user_id="U0ADMIN", text="pause all")
            response = await client.post("/slack/events", data=request.body, headers=request.headers)
            assert response.status == 401
        assert (await client.get("/healthz")).status == 200
