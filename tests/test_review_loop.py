from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from bot import agents, policy
from bot.slack_app import DenialLog
from handlers import ids
from storage.tables import AuditEvent, Draft
from tests.conftest import EXECUTOR_SECRET, SIGNING_SECRET
from tests.doubles import signing
from tests.doubles.receiver import Received
from tests.harness import Harness, blocks_text, edit_values, eventually, harness


@pytest.fixture
async def h(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(db_url, tmp_path) as value:
        yield value


def has_buttons(message: dict[str, Any]) -> bool:
    return any(b.get("type") == "actions" for b in message.get("blocks") or [])


async def test_approve_executes_once_signed_and_updates_message(h: Harness) -> None:
    created = await h.submit()
    message = await h.posted(created["id"])
    assert message["channel"] == "C0REFUNDS"
    assert message["text"] and has_buttons(message)
    assert "refund · 30.00 USD · support-bot" in blocks_text(message)

    status, _ = await h.click("U0ALICE", ids.APPROVE, created["id"])
    assert status == 200
    view = await h.status(created["id"], "executed")
    assert view["decisions"][0]["action"] == "approve" and view["decisions"][0]["by"] == "U0ALICE"
    assert view["execution"]["status"] == "succeeded"

    assert len(h.executor.requests) == 1
    request = h.executor.requests[0]
    assert request.headers["Idempotency-Key"] == created["id"] == request.headers["webhook-id"]
    payload = h.verify_webhook(EXECUTOR_SECRET, request)
    assert payload["draft_id"] == created["id"] and payload["amount"] == "30.00"
    assert payload["approvers"] == ["U0ALICE"]

    def updated() -> bool:
        current = h.slack.message(message["channel"], message["ts"])
        return not has_buttons(current) and "carried out" in blocks_text(current)

    await eventually(updated)
    posts = [c for c in h.slack.calls("chat.postMessage") if c.params.get("channel") == "C0REFUNDS"]
    assert len(posts) == 1


async def test_edit_opens_a_prefilled_modal_and_approves_the_edited_text(h: Harness) -> None:
    created = await h.submit()
    await h.click("U0BOB", ids.EDIT, created["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    view = opened[0].params["view"]
    assert view["callback_id"] == ids.EDIT_MODAL
    assert "I've refunded $30.00" in json.dumps(view["blocks"])
    meta = view["private_metadata"]

    edited = "Hi Dana, we refunded $30.00 to your original card; it shows in 3-5 days."
    values = edit_values(edited)
    status, _ = await h.submit_view("U0BOB", ids.EDIT_MODAL, meta, values)
    assert status == 200
    result = await h.status(created["id"], "executed")
    assert result["edited"] is True and result["approved_body"] == edited
    assert result["body"].startswith("Hi Dana, I've refunded")
    assert result["decisions"][0]["action"] == "edit"
    assert h.executor.requests[0].json["approved_body"] == edited
    threads = await eventually(
        lambda: [c for c in h.slack.calls("chat.postMessage") if c.params.get("thread_ts")]
    )
    assert (
        "edited the draft" in threads[0].params["text"]
        and "+Hi Dana, we refunded" in threads[0].params["text"]
    )


async def test_edit_is_refused_at_the_click_when_submitting_it_would_be_refused(h: Harness) -> None:
    # No modal to fill in for nothing: the requester, and a paused agent's draft (Reject still opens).
    asked = await h.submit(requested_by="U0BOB")
    waiting = await h.submit(summary="second")
    await h.click("U0BOB", ids.EDIT, asked["id"])
    await eventually(lambda: [t for t in h.ephemeral_texts() if "You requested this action" in t])
    await h.command("U0BOB", "pause support-bot")
    await h.click("U0ALICE", ids.EDIT, waiting["id"])
    await eventually(lambda: [t for t in h.ephemeral_texts() if "The agent is paused" in t])
    assert h.slack.calls("views.open") == []
    await h.click("U0ALICE", ids.REJECT, waiting["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    assert opened[0].params["view"]["callback_id"] == ids.REJECT_MODAL


def test_a_first_approver_may_not_approve_again_nor_a_requester_at_all() -> None:
    assert (
        policy.refusal_to_approve("U0A", requested_by="U0A", first_approver=None) == policy.REQUESTER_REFUSED
    )
    assert (
        policy.refusal_to_approve("U0A", requested_by=None, first_approver="U0A")
        == policy.FIRST_APPROVER_AGAIN
    )
    assert policy.refusal_to_approve("U0A", requested_by="U0B", first_approver="U0C") is None


async def test_an_edit_to_nothing_visible_is_refused_and_the_modal_stays_open(h: Harness) -> None:
    created = await h.submit()
    await h.click("U0BOB", ids.EDIT, created["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    meta = opened[0].params["view"]["private_metadata"]
    for blank in ("  ", "\u200b", "\ufeff\u200d"):
        status, body = await h.submit_view("U0BOB", ids.EDIT_MODAL, meta, edit_values(blank))
        assert status == 200 and json.loads(body)["errors"] == {
            ids.EDIT_BODY_BLOCK: "The reply cannot be empty."
        }
    assert (await h.draft(created["id"]))["status"] == "pending"


async def test_reject_requires_a_reason_and_returns_it_to_the_agent(h: Harness) -> None:
    created = await h.submit(callback_url=h.callbacks.url + "/hook")
    await h.click("U0ALICE", ids.REJECT, created["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    meta = opened[0].params["view"]["private_metadata"]

    for blank in ("  ", "\u200b", " \u200e\u00ad "):  # nothing the agent would read
        empty = {
            ids.REJECT_REASON_BLOCK: {ids.REJECT_REASON_INPUT: {"type": "plain_text_input", "value": blank}}
        }
        status, body = await h.submit_view("U0ALICE", ids.REJECT_MODAL, meta, empty)
        assert status == 200 and json.loads(body)["errors"] == {
            ids.REJECT_REASON_BLOCK: "A reason is required."
        }
    assert (await h.draft(created["id"]))["status"] == "pending"

    reason = {
        ids.REJECT_REASON_BLOCK: {
            ids.REJECT_REASON_INPUT: {"type": "plain_text_input", "value": "Order was never delivered"}
        }
    }
    await h.submit_view("U0ALICE", ids.REJECT_MODAL, meta, reason)
    result = await h.status(created["id"], "rejected")
    assert result["decisions"] == [
        {
            "action": "reject",
            "by": "U0ALICE",
            "reason": "Order was never delivered",
            "at": result["decisions"][0]["at"],
        }
    ]
    assert h.executor.requests == []
    callback = await eventually(lambda: h.callbacks.requests)
    body = h.verify_webhook(h.callback_secret, callback[0])
    assert body["type"] == "draft.rejected" and body["draft"]["status"] == "rejected"


async def test_pending_draft_expires_and_its_message_loses_the_buttons(h: Harness) -> None:
    created = await h.submit()
    message = await h.posted(created["id"])
    h.clock.advance(hours=4, seconds=1)
    await h.status(created["id"], "expired")
    await eventually(lambda: not has_buttons(h.slack.message(message["channel"], message["ts"])))
    assert h.executor.requests == []
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    assert (await h.draft(created["id"]))["status"] == "expired"
    await eventually(lambda: any("Already expired" in t for t in h.ephemeral_texts()))


async def test_withdrawn_draft_is_shown_as_withdrawn(h: Harness) -> None:
    created = await h.submit()
    message = await h.posted(created["id"])
    response = await h.client.delete(f"/v1/drafts/{created['id']}", headers=h.auth())
    assert response.status == 200
    await eventually(lambda: "Withdrawn" in blocks_text(h.slack.message(message["channel"], message["ts"])))


async def test_executor_refusal_fails_then_retry_executes_with_the_same_key(h: Harness) -> None:
    h.executor.script(400)
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    failed = await h.status(created["id"], "failed")
    assert failed["execution"]["status"] == "failed" and "400" in failed["execution"]["last_error"]
    assert len(h.executor.requests) == 1  # 4xx is never retried
    message = await h.posted(created["id"])
    await eventually(lambda: ids.RETRY in blocks_text(h.slack.message(message["channel"], message["ts"])))
    await eventually(
        lambda: [c for c in h.slack.calls("chat.postMessage") if c.params.get("channel") == "C0ALERTS"]
    )

    await h.click("U0BOB", ids.RETRY, created["id"])
    await h.status(created["id"], "executed")
    keys = {r.headers["Idempotency-Key"] for r in h.executor.requests}
    assert keys == {created["id"]} and len(h.executor.requests) == 2


async def test_server_errors_are_retried_with_the_same_key_until_success(h: Harness) -> None:
    h.executor.script(503, (429, {"Retry-After": "0"}))
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    result = await h.status(created["id"], "executed")
    assert result["execution"]["attempts"] == 3
    assert [r.headers["Idempotency-Key"] for r in h.executor.requests] == [created["id"]] * 3


async def test_unanswered_execution_ends_in_needs_reconciliation_never_failed(h: Harness) -> None:
    h.executor.script("reset", "reset", "reset")
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    result = await h.status(created["id"], "needs_reconciliation")
    assert result["execution"]["status"] == "needs_reconciliation"
    assert {r.headers["Idempotency-Key"] for r in h.executor.requests} == {created["id"]}
    assert len(h.executor.effects) == 1  # every attempt carried the same key: one effect at most
    message = await h.posted(created["id"])
    await eventually(
        lambda: "Needs reconciliation" in blocks_text(h.slack.message(message["channel"], message["ts"]))
    )


async def test_callbacks_follow_every_status_change_signed_for_the_agent(h: Harness) -> None:
    created = await h.submit(callback_url=h.callbacks.url + "/hook")
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")
    requests = await eventually(lambda: h.callbacks.requests if len(h.callbacks.requests) >= 2 else None)
    bodies = [h.verify_webhook(h.callback_secret, r) for r in requests]
    assert [b["type"] for b in bodies] == ["draft.approved", "draft.executed"]
    # Each event carries the draft as that change left it, however late it is delivered.
    approved, executed = (b["draft"] for b in bodies)
    assert approved["status"] == "approved" and approved["execution"]["status"] == "pending"
    assert approved["decisions"][0]["by"] == "U0ALICE"
    assert executed["status"] == "executed" and executed["execution"]["status"] == "succeeded"


async def test_a_retried_callback_sends_the_same_message_under_the_same_id(h: Harness) -> None:
    h.callbacks.script(503, 503)
    created = await h.submit(callback_url=h.callbacks.url + "/hook")
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")
    # Two refusals shared between the two events (approved, executed), then both delivered.
    requests = await eventually(lambda: h.callbacks.requests if len(h.callbacks.requests) >= 4 else None)
    by_id: dict[str, list[Received]] = {}
    for request in requests:
        by_id.setdefault(request.headers["webhook-id"], []).append(request)
    assert len(by_id) == 2 and sorted(len(sent) for sent in by_id.values()) in ([1, 3], [2, 2])
    for sent in by_id.values():
        assert len({r.body for r in sent}) == 1  # every retry is the same message
    statuses = {h.verify_webhook(h.callback_secret, sent[0])["draft"]["status"] for sent in by_id.values()}
    assert statuses == {"approved", "executed"}


async def test_a_rotated_callback_secret_signs_beside_the_old_one_until_the_overlap_ends(h: Harness) -> None:
    new, _ = agents.rotate_callback_secret(h.rt, name="support-bot", overlap=timedelta(hours=1))

    async def callbacks_of_an_approval() -> list[Received]:
        seen = len(h.callbacks.requests)
        created = await h.submit(callback_url=h.callbacks.url + "/hook")
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        await h.status(created["id"], "executed")
        return await eventually(
            lambda: h.callbacks.requests[seen:] if len(h.callbacks.requests) >= seen + 2 else None
        )

    # During the overlap each callback carries two signatures: an agent holding either secret accepts it.
    for request in await callbacks_of_an_approval():
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        assert h.verify_webhook(new, request) == h.verify_webhook(h.callback_secret, request)
    h.clock.advance(hours=1, seconds=1)
    for request in await callbacks_of_an_approval():
        assert h.verify_webhook(new, request)["type"].startswith("draft.")
        with pytest.raises(AssertionError, match="no matching signature"):
            h.verify_webhook(h.callback_secret, request)


async def test_failing_callback_never_blocks_the_draft(h: Harness) -> None:
    h.callbacks.script(500, 500, 500, 500, 500, 500, 500, 500)
    created = await h.submit(callback_url=h.callbacks.url + "/hook")
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("U0OUT", "not a reviewer"),
        ("U0CAROL", "not a reviewer"),
        ("U0GUEST", "guest"),
        ("U0GONE", "guest"),
        ("U0BOB", "requested this"),
    ],
)
async def test_unauthorized_clicks_are_refused_audited_and_change_nothing(
    h: Harness, user: str, why: str
) -> None:
    created = await h.submit(requested_by="U0BOB")
    await h.click(user, ids.APPROVE, created["id"])
    await eventually(lambda: any(why in t for t in h.ephemeral_texts()))
    assert (await h.draft(created["id"]))["status"] == "pending"
    with h.rt.engine.connect() as conn:
        denied = conn.execute(
            sa.select(col(AuditEvent.actor)).where(col(AuditEvent.outcome) == "denied")
        ).all()
    assert [row[0] for row in denied] == [f"slack:{user}"]
    assert h.executor.requests == []


async def test_two_person_rule_needs_a_second_different_approver(h: Harness) -> None:
    created = await h.submit(amount="250.00", body="Refund of $250.00 issued.")
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await eventually(lambda: any("First approval recorded" in t for t in h.ephemeral_texts()))
    assert (await h.draft(created["id"]))["status"] == "pending"
    message = await h.posted(created["id"])
    await eventually(
        lambda: "First approval by" in blocks_text(h.slack.message(message["channel"], message["ts"]))
    )

    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await eventually(lambda: any("second, different reviewer" in t for t in h.ephemeral_texts()))
    assert (await h.draft(created["id"]))["status"] == "pending"

    await h.click("U0BOB", ids.APPROVE, created["id"])
    result = await h.status(created["id"], "executed")
    assert [d["by"] for d in result["decisions"]] == ["U0ALICE", "U0BOB"]
    assert len(h.executor.requests) == 1


async def test_second_click_loses_cleanly_and_is_told_who_decided(h: Harness) -> None:
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")
    await h.click("U0BOB", ids.APPROVE, created["id"])
    await eventually(lambda: any("by <@U0ALICE>" in t for t in h.ephemeral_texts()))
    assert len(h.executor.requests) == 1


async def test_stale_version_is_refused(h: Harness) -> None:
    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"], version=7)
    await eventually(lambda: any("review version 1" in t for t in h.ephemeral_texts()))
    assert (await h.draft(created["id"]))["status"] == "pending"


@pytest.mark.parametrize(
    "forge",
    ["bad_signature", "stale", "future", "missing", "non_numeric"],
)
async def test_forged_or_stale_slack_requests_get_401_and_change_nothing(h: Harness, forge: str) -> None:
    created = await h.submit()
    message = await h.posted(created["id"])
    now = int(time.time())
    timestamp = {"stale": now - 301, "future": now + 301}.get(forge, now)
    body, headers = signing.block_action(
        SIGNING_SECRET,
        user_id="U0ALICE",
        action_id=ids.APPROVE,
        value=f"{created['id']}:1",
        channel_id=message["channel"],
        message_ts=message["ts"],
        timestamp=timestamp,
    )
    if forge == "bad_signature":
        headers["X-Slack-Signature"] = signing.sign("wrong-secret", timestamp, body)
    if forge == "missing":
        headers.pop("X-Slack-Signature")
    if forge == "non_numeric":
        headers["X-Slack-Request-Timestamp"] = "yesterday"
    response = await h.client.post("/slack/events", data=body, headers=headers)
    assert response.status == 401
    assert (await h.draft(created["id"]))["status"] == "pending"
    assert h.executor.requests == []
    with h.rt.engine.connect() as conn:
        denied = conn.exec_driver_sql(
            "SELECT actor, outcome FROM audit_event WHERE action = 'slack.auth_denied'"
        ).all()
    assert [(actor.startswith("remote:"), outcome) for actor, outcome in denied] == [(True, "denied")]


async def test_a_flood_of_forged_requests_is_refused_without_filling_the_audit_log(h: Harness) -> None:
    body, headers = signing.block_action(
        SIGNING_SECRET, user_id="U0ALICE", action_id=ids.APPROVE, value="d_x:1"
    )
    headers["X-Slack-Signature"] = "v0=" + "0" * 64
    for _ in range(100):
        assert (await h.client.post("/slack/events", data=body, headers=headers)).status == 401
    with h.rt.engine.connect() as conn:
        denied = conn.exec_driver_sql(
            "SELECT count(*) FROM audit_event WHERE action = 'slack.auth_denied'"
        ).scalar()
    assert denied == 30  # DenialLog.per_minute; the other 70 are counted into the next row written


def test_the_denial_log_counts_what_it_leaves_out_into_the_next_row() -> None:
    now = [0.0]
    log = DenialLog(per_minute=2, clock=lambda: now[0])
    assert [log.admit() for _ in range(5)] == [0, 0, None, None, None]
    now[0] = 60.0
    assert [log.admit(), log.admit(), log.admit()] == [3, 0, None]


async def test_replayed_body_with_its_old_signature_is_refused(h: Harness) -> None:
    created = await h.submit()
    stale = int(time.time()) - 600
    body, headers = signing.block_action(
        SIGNING_SECRET, user_id="U0ALICE", action_id=ids.APPROVE, value=f"{created['id']}:1", timestamp=stale
    )
    response = await h.client.post("/slack/events", data=body, headers=headers)
    assert response.status == 401
    assert (await h.draft(created["id"]))["status"] == "pending"


@pytest.mark.parametrize(
    "nasty",
    [
        "<!channel> refund approved",
        "hey <@U0ALICE> look",
        "<!subteam^S0123|@support> ping",
        "click <http://evil.example|https://bank.example> now",
        "@here @channel @everyone",
        "x" * 10_000,
        "&lt;!channel&gt; & <>" * 400,
        "line\n" * 3000,
    ],
)
async def test_agent_text_renders_safely(h: Harness, nasty: str) -> None:
    created = await h.submit(body=nasty, context=nasty, summary=nasty[:300])
    message = await h.posted(created["id"])
    rendered = blocks_text(message) + message["text"]
    for forbidden in ("<!channel>", "<@U0ALICE>", "<!subteam", "<http://evil", "<!here", "@here", "@channel"):
        assert forbidden not in rendered
    assert not [c for c in h.slack.calls("chat.postMessage") if not c.ok]


async def test_url_verification_is_answered_when_signed(h: Harness) -> None:
    status, body = await h.post_signed(signing.url_verification(SIGNING_SECRET, "challenge-123"))
    assert status == 200 and json.loads(body)["challenge"] == "challenge-123"


async def test_every_transition_is_in_a_valid_audit_chain(h: Harness) -> None:
    from bot import audit

    created = await h.submit()
    await h.click("U0ALICE", ids.APPROVE, created["id"])
    await h.status(created["id"], "executed")
    with h.rt.engine.connect() as conn:
        actions = [
            row[0]
            for row in conn.execute(
                sa.select(col(AuditEvent.action))
                .where(col(AuditEvent.subject) == created["id"])
                .order_by(col(AuditEvent.seq))
            )
        ]
        draft = conn.execute(sa.select(col(Draft.status)).where(col(Draft.id) == created["id"])).scalar_one()
    assert actions == ["draft.submitted", "draft.approved", "draft.executed"]
    assert draft == "executed"
    assert audit.verify(h.rt.engine).ok


async def test_reviewer_group_members_may_decide_and_others_may_not(db_url: str, tmp_path: Path) -> None:
    from bot import agents

    extra = '\n[categories.billing]\nchannel = "C0BILLING"\nreviewer_group = "S0REVIEW"\nai_review = false\n'
    async with harness(db_url, tmp_path, extra_config=extra) as h:
        h.slack.configure(usergroups={"S0REVIEW": ["U0CAROL"]})
        bot = agents.add(h.rt, name="billing-bot", categories=["billing"], callback_prefixes=[])
        headers = {"Authorization": f"Bearer {bot.token}"}
        drafts = []
        for _ in range(2):
            response = await h.client.post(
                "/v1/drafts", json={"category": "billing", "summary": "s", "body": "b"}, headers=headers
            )
            drafts.append((await response.json())["id"])

        async def status(draft_id: str) -> str:
            view = await (await h.client.get(f"/v1/drafts/{draft_id}", headers=headers)).json()
            return str(view["status"])

        await h.click("U0ALICE", ids.APPROVE, drafts[0])
        await eventually(lambda: any("not a reviewer" in t for t in h.ephemeral_texts()))
        assert await status(drafts[0]) == "pending"
        await h.click("U0CAROL", ids.APPROVE, drafts[1])
        await eventually(lambda: any(t.startswith("Approved") for t in h.ephemeral_texts()))
        assert await status(drafts[1]) == "approved"
        await h.click("U0CAROL", ids.APPROVE, drafts[0])
        await eventually(lambda: sum(t.startswith("Approved") for t in h.ephemeral_texts()) == 2)
        assert len(h.slack.calls("usergroups.users.list")) == 1  # cached (the API is Tier 2)


async def test_a_draft_too_long_for_the_edit_box_cannot_be_edited_in_slack(h: Harness) -> None:
    body = "Hi Dana, about your refund of $30.00. " + "Details follow. " * 200 + "TAIL-END"
    assert len(body) > 3000
    created = await h.submit(body=body)
    await h.click("U0BOB", ids.EDIT, created["id"])
    await eventually(lambda: any("more than Slack's edit box holds" in t for t in h.ephemeral_texts()))
    assert h.slack.calls("views.open") == []
    # A modal submitted anyway (an old one, or a forged payload) approves nothing.
    meta = json.dumps({"draft_id": created["id"], "version": 1, "channel": "C0REFUNDS", "ts": None})
    values = edit_values(body[:3000])
    status, _ = await h.submit_view("U0BOB", ids.EDIT_MODAL, meta, values)
    assert status == 200
    await eventually(lambda: sum("more than Slack's edit box holds" in t for t in h.ephemeral_texts()) == 2)
    view = await h.draft(created["id"])
    assert view["status"] == "pending" and view["approved_body"] is None


async def test_an_edit_submitted_unchanged_is_an_approval(h: Harness) -> None:
    created = await h.submit()
    await h.click("U0BOB", ids.EDIT, created["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    body = (await h.draft(created["id"]))["body"]
    values = edit_values(body)
    status, _ = await h.submit_view(
        "U0BOB", ids.EDIT_MODAL, opened[0].params["view"]["private_metadata"], values
    )
    assert status == 200
    view = await h.status(created["id"], "executed")
    assert view["edited"] is False and [d["action"] for d in view["decisions"]] == ["approve"]


async def test_the_edit_diff_in_the_thread_cannot_ping_or_mention(h: Harness) -> None:
    created = await h.submit(body="Hi <!channel> <@U0BOB> @here, see <https://evil.example|help.acme.com>.")
    await h.click("U0BOB", ids.EDIT, created["id"])
    opened = await eventually(lambda: h.slack.calls("views.open"))
    values = edit_values("Hi <!here> Dana.")
    await h.submit_view("U0BOB", ids.EDIT_MODAL, opened[0].params["view"]["private_metadata"], values)
    threads = await eventually(
        lambda: [c for c in h.slack.calls("chat.postMessage") if c.params.get("thread_ts")]
    )
    text = threads[0].params["text"]
    assert text.startswith("<@U0BOB> edited the draft")
    for raw in ("<!channel>", "<@U0BOB> @", "<!here>", "<https://evil.example", "@here"):
        assert raw not in text, (raw, text)
    assert "&lt;!channel&gt;" in text and "&lt;!here&gt;" in text
