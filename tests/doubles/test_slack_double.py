"""The Slack doubles checked against the real slack_sdk / slack_bolt code and Slack's test vectors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.internals import parse_body
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, SectionBlock
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.doubles import signing
from tests.doubles.slack_api import SlackDouble, SlackDoubleProcess
from tests.doubles.socket_mode import SocketModeDouble

SECRET = "test-signing-secret"
USERS = {
    "U0APPROVER": {"name": "alice", "is_admin": True, "tz": "Europe/Berlin"},
    "U0GUEST": {"name": "gus", "is_restricted": True},
}
GROUPS = {"S0APPROVERS": ["U0APPROVER"]}


class FrozenClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


@pytest.fixture
async def slack() -> AsyncIterator[SlackDouble]:
    async with SlackDouble(users=USERS, usergroups=GROUPS, channels={"C0001", "C0002"}) as double:
        yield double


@pytest.fixture
def client(slack: SlackDouble) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test", base_url=slack.base_url)


def _raw_section(text: str, block_id: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
    if block_id is not None:
        block["block_id"] = block_id
    return block


def _sdk_text_warning(kwargs: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    # slack_sdk warns (an error under filterwarnings=error) when chat.* is called without text.
    return pytest.warns(UserWarning, match="text") if "text" not in kwargs else contextlib.nullcontext()


# -- signing -----------------------------------------------------------------------------------

SLACK_DOC_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
JSON_VECTOR_BODY = (
    '{"token":"XXYYZZ","team_id":"T0001","api_app_id":"A0001","event":{"type":"app_home_opened",'
    '"user":"U0APPROVER","channel":"D0001","tab":"home","event_ts":"1700000000.000100"},'
    '"type":"event_callback","event_id":"Ev0001","event_time":1700000000}'
)


def test_sign_matches_slacks_published_vector() -> None:
    assert len(SLACK_DOC_BODY) == 362
    signature = signing.sign("8f742231b10e8888abcd99yyyzzz85a5", 1531420618, SLACK_DOC_BODY)
    assert signature == "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    assert (
        signing.sign("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", SLACK_DOC_BODY.encode()) == signature
    )


def test_sign_matches_json_event_vector() -> None:
    assert len(JSON_VECTOR_BODY) == 242
    assert (
        signing.sign(SECRET, 1700000000, JSON_VECTOR_BODY)
        == "v0=f52e2cb28325242f9a6f8b6f51a3cc5fe1a00fc538f2977fc15460b1133dd618"
    )


def test_slash_command_body_matches_slacks_form_encoding() -> None:
    body, headers = signing.slash_command(
        SECRET,
        user_id="U0OPS",
        user_name="ops",
        text="kill agent-7",
        channel_id="C0001",
        channel_name="agent-approvals",
        response_url="https://hooks.slack.com/commands/T0001/111/abc",
        trigger_id="111.222.abc",
        timestamp=1700000000,
    )
    assert body == (
        b"token=XXYYZZ&team_id=T0001&team_domain=acme&channel_id=C0001&channel_name=agent-approvals"
        b"&user_id=U0OPS&user_name=ops&command=%2Fagent&text=kill+agent-7&api_app_id=A0001"
        b"&is_enterprise_install=false&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT0001%2F111%2Fabc"
        b"&trigger_id=111.222.abc"
    )
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["X-Slack-Signature"] == signing.sign(SECRET, 1700000000, body)


@pytest.mark.parametrize(
    "build",
    [
        lambda ts: signing.slash_command(SECRET, user_id="U0OPS", text="status", timestamp=ts),
        lambda ts: signing.block_action(SECRET, user_id="U0A", action_id="a", value="42", timestamp=ts),
        lambda ts: signing.view_submission(SECRET, user_id="U0A", callback_id="cb", timestamp=ts),
        lambda ts: signing.view_closed(SECRET, user_id="U0A", callback_id="cb", timestamp=ts),
        lambda ts: signing.event_callback(SECRET, signing.app_home_opened_event("U0A"), timestamp=ts),
        lambda ts: signing.url_verification(SECRET, "challenge-1", timestamp=ts),
    ],
)
def test_builders_pass_sdk_verifier_and_tampering_fails(build: Any) -> None:
    now = 1700000000
    body, headers = build(now)
    verifier = SignatureVerifier(SECRET, clock=FrozenClock(now))
    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + b" ", headers)
    assert not SignatureVerifier("other-secret", clock=FrozenClock(now)).is_valid_request(body, headers)
    assert SignatureVerifier(SECRET, clock=FrozenClock(now + 300)).is_valid_request(body, headers)
    assert not SignatureVerifier(SECRET, clock=FrozenClock(now + 301)).is_valid_request(body, headers)
    assert not SignatureVerifier(SECRET, clock=FrozenClock(now - 301)).is_valid_request(body, headers)


def test_interactive_payloads_parse_the_way_bolt_parses_them() -> None:
    body, headers = signing.block_action(
        SECRET, user_id="U0APPROVER", action_id="draft.approve", value="42", block_id="req:42"
    )
    parsed = parse_body(body.decode(), headers["Content-Type"])
    assert parsed["type"] == "block_actions"
    assert parsed["actions"][0]["action_id"] == "draft.approve"
    assert parsed["container"] == {
        "type": "message",
        "message_ts": signing.DEFAULT_MESSAGE_TS,
        "channel_id": "C0001",
        "is_ephemeral": False,
    }
    body, headers = signing.view_submission(
        SECRET,
        user_id="U0APPROVER",
        callback_id="deny_reason",
        private_metadata='{"request_id":"42"}',
        state_values={"reason": {"reason_input": {"type": "plain_text_input", "value": "unsafe"}}},
    )
    view = parse_body(body.decode(), headers["Content-Type"])["view"]
    assert view["state"]["values"]["reason"]["reason_input"]["value"] == "unsafe"
    event_body, event_headers = signing.event_callback(
        SECRET, signing.app_home_opened_event("U0A"), event_id="Ev9", retry_num=1
    )
    assert json.loads(event_body)["event_id"] == "Ev9"
    assert event_headers["X-Slack-Retry-Num"] == "1"
    assert event_headers["X-Slack-Retry-Reason"] == "http_timeout"


async def test_bolt_app_accepts_signed_action_and_calls_double(slack: SlackDouble) -> None:
    app = AsyncApp(
        client=AsyncWebClient(token="xoxb-test", base_url=slack.base_url),
        signing_secret=SECRET,
        process_before_response=True,
    )
    seen: list[str] = []

    async def on_approve(ack: Any, action: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        seen.append(action["value"])
        await client.chat_postMessage(channel="C0001", text=f"approved {action['value']}")

    app.action("draft.approve")(on_approve)
    signed = signing.block_action(SECRET, user_id="U0APPROVER", action_id="draft.approve", value="42")
    response = await app.async_dispatch(_bolt_request(signed))
    assert response.status == 200
    assert seen == ["42"]
    assert [c.method for c in slack.calls()] == ["auth.test", "chat.postMessage"]
    stale_signed = signing.block_action(
        SECRET, user_id="U0APPROVER", action_id="draft.approve", value="43", timestamp=int(time.time()) - 301
    )
    stale = await app.async_dispatch(_bolt_request(stale_signed))
    assert stale.status == 401
    assert seen == ["42"]


def _bolt_request(signed: signing.SignedRequest) -> AsyncBoltRequest:
    # Bolt's adapters hand it lower-cased header names with list values.
    headers: dict[str, str | Sequence[str]] = {k.lower(): [v] for k, v in signed.headers.items()}
    return AsyncBoltRequest(body=signed.body.decode(), headers=headers)


# -- Web API -----------------------------------------------------------------------------------


async def test_post_then_update_keeps_history(slack: SlackDouble, client: AsyncWebClient) -> None:
    blocks = [
        SectionBlock(block_id="req:42:summary", text="*agent-7* requests `shell.exec`"),
        ActionsBlock(
            block_id="req:42",
            elements=[
                ButtonElement(action_id="draft.approve", text="Approve", value="42", style="primary"),
                ButtonElement(action_id="draft.deny", text="Deny", value="42", style="danger"),
            ],
        ),
    ]
    posted = await client.chat_postMessage(channel="C0001", text="Approval needed", blocks=blocks)
    assert posted["channel"] == "C0001"
    assert posted["message"]["blocks"][1]["elements"][0]["action_id"] == "draft.approve"
    second = await client.chat_postMessage(channel="C0001", text="another")
    assert float(second["ts"]) > float(posted["ts"])
    assert len(posted["ts"].split(".")[1]) == 6

    updated = await client.chat_update(channel="C0001", ts=posted["ts"], text="Approved by <@U0APPROVER>")
    assert updated["ts"] == posted["ts"]
    record = slack.message("C0001", posted["ts"])
    assert record["text"] == "Approved by <@U0APPROVER>"
    assert record["blocks"] == []
    assert record["history"][0]["text"] == "Approval needed"
    assert slack.calls("chat.update")[0].params["ts"] == posted["ts"]
    assert slack.calls("chat.update")[0].headers["authorization"] == "Bearer xoxb-test"


async def test_chat_update_rejects_unknown_messages_and_user_ids(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as unknown:
        await client.chat_update(channel="C0001", ts="1700000000.000100", text="x")
    assert unknown.value.response["error"] == "message_not_found"
    posted = await client.chat_postMessage(channel="U0APPROVER", text="dm")
    assert posted["channel"] == "D0APPROVER"
    with pytest.raises(SlackApiError) as by_user:
        await client.chat_update(channel="U0APPROVER", ts=posted["ts"], text="x")
    assert by_user.value.response["error"] == "channel_not_found"
    opened = await client.conversations_open(users="U0APPROVER")
    assert opened["channel"]["id"] == posted["channel"]
    await client.chat_update(channel=opened["channel"]["id"], ts=posted["ts"], text="edited")


async def test_messages_without_content_or_too_long_are_rejected(client: AsyncWebClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"channel": "C0001"}, "no_text"),
        ({"channel": "C0001", "text": "x" * 40_001}, "msg_too_long"),
        ({"channel": "C0999", "text": "x"}, "channel_not_found"),
    ]
    for kwargs, error in cases:
        with pytest.raises(SlackApiError) as err, _sdk_text_warning(kwargs):
            await client.chat_postMessage(**kwargs)
        assert err.value.response["error"] == error


async def test_blocks_whose_text_adds_up_past_the_total_are_msg_blocks_too_long(
    client: AsyncWebClient,
) -> None:
    four = [_raw_section("x" * 2750) for _ in range(4)]  # 11,000 characters: the most allowed
    await client.chat_postMessage(channel="C0001", text="long", blocks=four)
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0001", text="longer", blocks=[*four, _raw_section("x")])
    assert err.value.response["error"] == "msg_blocks_too_long"


async def test_a_view_over_250_kb_is_view_too_large(client: AsyncWebClient) -> None:
    # 100 sections of 2,600 characters: over 260 kB of JSON, every block valid.
    view = {"type": "home", "blocks": [_raw_section("x" * 2600) for _ in range(100)]}
    with pytest.raises(SlackApiError) as err:
        await client.views_publish(user_id="U0APPROVER", view=view)
    assert err.value.response["error"] == "view_too_large"
    await client.views_publish(user_id="U0APPROVER", view=view | {"blocks": view["blocks"][:20]})


async def test_51_blocks_are_invalid_blocks(client: AsyncWebClient) -> None:
    blocks = [_raw_section(f"row {i}") for i in range(51)]
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0001", text="many", blocks=blocks)
    assert err.value.response.status_code == 200
    assert err.value.response["error"] == "invalid_blocks"
    assert err.value.response["errors"] == ["no more than 50 items allowed [json-pointer:/blocks]"]
    await client.chat_postMessage(channel="C0001", text="fifty", blocks=blocks[:50])


async def test_section_over_3000_chars_is_invalid_blocks(client: AsyncWebClient) -> None:
    blocks = [_raw_section("ok"), _raw_section("x" * 3001)]
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0001", text="long", blocks=blocks)
    assert err.value.response["errors"] == [
        "must be less than 3001 characters [json-pointer:/blocks/1/text/text]"
    ]
    assert err.value.response["response_metadata"]["messages"] == [
        "[ERROR] must be less than 3001 characters [json-pointer:/blocks/1/text/text]"
    ]
    await client.chat_postMessage(channel="C0001", text="ok", blocks=[_raw_section("x" * 3000)])


@pytest.mark.parametrize(
    ("block", "pointer"),
    [
        (_raw_section(""), "/blocks/0/text/text"),
        ({"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}, "/blocks/0/fields"),
        ({"type": "section", "fields": [{"type": "mrkdwn", "text": "x" * 2001}]}, "/blocks/0/fields/0/text"),
        ({"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}, "/blocks/0/text/text"),
        ({"type": "header", "text": {"type": "mrkdwn", "text": "h"}}, "/blocks/0/text"),
        ({"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}, "/blocks/0/elements"),
        (_raw_section("x", block_id="b" * 256), "/blocks/0/block_id"),
        (
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "action_id": f"a{i}", "text": {"type": "plain_text", "text": "b"}}
                    for i in range(26)
                ],
            },
            "/blocks/0/elements",
        ),
        (
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "b" * 76}}
                ],
            },
            "/blocks/0/elements/0/text/text",
        ),
        (
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "a",
                        "value": "v" * 2001,
                        "text": {"type": "plain_text", "text": "b"},
                    }
                ],
            },
            "/blocks/0/elements/0/value",
        ),
        (
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "action_id": "a" * 256, "text": {"type": "plain_text", "text": "b"}}
                ],
            },
            "/blocks/0/elements/0/action_id",
        ),
        (
            {
                "type": "input",
                "label": {"type": "plain_text", "text": "L" * 2001},
                "element": {"type": "plain_text_input", "action_id": "i"},
            },
            "/blocks/0/label/text",
        ),
        (
            {
                "type": "input",
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {"type": "plain_text_input", "action_id": "i", "max_length": 3001},
            },
            "/blocks/0/element/max_length",
        ),
    ],
)
async def test_block_kit_limits_are_enforced(
    client: AsyncWebClient, block: dict[str, Any], pointer: str
) -> None:
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0001", text="t", blocks=[block])
    assert err.value.response["error"] == "invalid_blocks"
    assert any(e.endswith(f"[json-pointer:{pointer}]") for e in err.value.response["errors"])


async def test_duplicate_block_ids_are_invalid_blocks(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(
            channel="C0001", text="t", blocks=[_raw_section("a", "same"), _raw_section("b", "same")]
        )
    assert err.value.response["errors"] == ["duplicate block_id: same [json-pointer:/blocks/1/block_id]"]


async def test_views_validate_and_update_with_hash(slack: SlackDouble, client: AsyncWebClient) -> None:
    modal = {
        "type": "modal",
        "callback_id": "deny_reason",
        "title": {"type": "plain_text", "text": "Deny request"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "private_metadata": '{"request_id":"42"}',
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {"type": "plain_text_input", "action_id": "reason_input", "multiline": True},
            }
        ],
    }
    opened = await client.views_open(trigger_id="1.2.abc", view=modal)
    view = opened["view"]
    assert view["id"].startswith("V")
    assert view["private_metadata"] == '{"request_id":"42"}'
    with pytest.raises(SlackApiError) as conflict:
        await client.views_update(view_id=view["id"], hash="stale.hash", view=modal)
    assert conflict.value.response["error"] == "hash_conflict"
    await client.views_update(view_id=view["id"], hash=view["hash"], view=modal)

    too_long = {**modal, "title": {"type": "plain_text", "text": "T" * 25}, "private_metadata": "m" * 3001}
    with pytest.raises(SlackApiError) as err:
        await client.views_open(trigger_id="1.2.abc", view=too_long)
    assert err.value.response["error"] == "invalid_arguments"
    assert err.value.response["response_metadata"]["messages"] == [
        "[ERROR] must be less than 25 characters [json-pointer:/view/title/text]",
        "[ERROR] must be less than 3001 characters [json-pointer:/view/private_metadata]",
    ]
    many = {**modal, "blocks": [_raw_section(str(i)) for i in range(101)]}
    with pytest.raises(SlackApiError) as err:
        await client.views_open(trigger_id="1.2.abc", view=many)
    assert err.value.response["error"] == "invalid_arguments"

    home = {"type": "home", "blocks": [_raw_section("Pending: 0")]}
    published = await client.views_publish(user_id="U0APPROVER", view=home)
    assert slack.home_views["U0APPROVER"]["id"] == published["view"]["id"]
    with pytest.raises(SlackApiError) as no_user:
        await client.views_publish(user_id="U0NOBODY", view=home)
    assert no_user.value.response["error"] == "user_not_found"


async def test_bad_or_missing_token_is_rejected(slack: SlackDouble) -> None:
    with pytest.raises(SlackApiError) as bad:
        await AsyncWebClient(token="xoxb-wrong", base_url=slack.base_url).auth_test()
    assert bad.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as missing:
        await AsyncWebClient(base_url=slack.base_url).auth_test()
    assert missing.value.response["error"] == "not_authed"


async def test_auth_test_reports_identity_and_scopes(client: AsyncWebClient) -> None:
    response = await client.auth_test()
    assert (response["team_id"], response["user_id"], response["bot_id"]) == ("T0001", "U0BOT", "B0001")
    assert "usergroups:read" in response.headers["x-oauth-scopes"].split(",")


async def test_missing_scope_and_unknown_method(slack: SlackDouble, client: AsyncWebClient) -> None:
    slack.configure(scopes=["chat:write"])
    with pytest.raises(SlackApiError) as err:
        await client.usergroups_users_list(usergroup="S0APPROVERS")
    assert err.value.response.data == {
        "ok": False,
        "error": "missing_scope",
        "needed": "usergroups:read",
        "provided": "chat:write",
    }
    with pytest.raises(SlackApiError) as unknown:
        await client.api_call("chat.frobnicate")
    assert unknown.value.response["error"] == "unknown_method"


async def test_429_with_retry_after_is_retried_by_sdk_handler(slack: SlackDouble) -> None:
    slack.fail("chat.postMessage", status=429, retry_after=0)
    client = AsyncWebClient(
        token="xoxb-test",
        base_url=slack.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    response = await client.chat_postMessage(channel="C0001", text="after a pause")
    assert response["ok"]
    calls = slack.calls("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].response == {"ok": False, "error": "ratelimited"}
    assert len(slack.messages) == 1


async def test_429_without_handler_raises_with_retry_after(
    slack: SlackDouble, client: AsyncWebClient
) -> None:
    slack.fail("users.info", status=429, retry_after=7, times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            await client.users_info(user="U0APPROVER")
        assert err.value.response.status_code == 429
        assert err.value.response.headers["Retry-After"] == "7"
        assert err.value.response["error"] == "ratelimited"
    assert (await client.users_info(user="U0APPROVER"))["ok"]


async def test_500_and_scripted_slack_errors(slack: SlackDouble, client: AsyncWebClient) -> None:
    slack.fail("*", status=500)
    slack.fail("chat.postMessage", status=200, error="channel_not_found")
    with pytest.raises(SlackApiError) as scripted:
        await client.chat_postMessage(channel="C0001", text="x")
    assert scripted.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as server:
        await client.auth_test()
    assert server.value.response.status_code == 500


async def test_fault_scoped_to_a_channel_spares_other_channels(
    slack: SlackDouble, client: AsyncWebClient
) -> None:
    slack.fail("chat.postMessage", status=500, channel="C0002")
    assert (await client.chat_postMessage(channel="C0001", text="elsewhere"))["ok"]
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0002", text="scripted")
    assert err.value.response.status_code == 500
    assert (await client.chat_postMessage(channel="C0002", text="used up"))["ok"]
    assert [c.status for c in slack.calls("chat.postMessage")] == [200, 500, 200]


async def test_timeout_mode_performs_the_call_but_answers_late(slack: SlackDouble) -> None:
    slack.fail("chat.postMessage", status="timeout", delay=0.5)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.1)) as session:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.base_url, session=session)
        with pytest.raises(asyncio.TimeoutError):
            await client.chat_postMessage(channel="C0001", text="did it post?")
    assert len(slack.messages) == 1


async def test_latency_delays_every_answer(slack: SlackDouble, client: AsyncWebClient) -> None:
    slack.latency = 0.05
    started = time.monotonic()
    await client.auth_test()
    assert time.monotonic() - started >= 0.05


async def test_channel_rate_is_recorded_and_optionally_enforced(
    slack: SlackDouble, client: AsyncWebClient
) -> None:
    for _ in range(4):
        await client.chat_postMessage(channel="C0001", text="burst")
    assert len(slack.post_times["C0001"]) == 4
    slack.enforce_channel_rate = True
    slack.post_times.clear()
    for _ in range(3):
        await client.chat_postMessage(channel="C0002", text="burst")
    with pytest.raises(SlackApiError) as err:
        await client.chat_postMessage(channel="C0002", text="one too many")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "1"
    await client.chat_postMessage(channel="C0001", text="other channel has its own bucket")


async def test_users_info_and_usergroups(client: AsyncWebClient) -> None:
    alice = (await client.users_info(user="U0APPROVER"))["user"]
    assert (alice["name"], alice["is_admin"], alice["is_restricted"], alice["tz"]) == (
        "alice",
        True,
        False,
        "Europe/Berlin",
    )
    assert (await client.users_info(user="U0GUEST"))["user"]["is_restricted"] is True
    with pytest.raises(SlackApiError) as missing_user:
        await client.users_info(user="U0NOBODY")
    assert missing_user.value.response["error"] == "user_not_found"
    assert (await client.usergroups_users_list(usergroup="S0APPROVERS"))["users"] == ["U0APPROVER"]
    with pytest.raises(SlackApiError) as missing_group:
        await client.usergroups_users_list(usergroup="S0NOPE")
    assert missing_group.value.response["error"] == "no_such_subteam"


async def test_ephemeral_and_permalink(slack: SlackDouble, client: AsyncWebClient) -> None:
    sent = await client.chat_postEphemeral(channel="C0001", user="U0APPROVER", text="only you")
    assert slack.ephemerals[0]["ts"] == sent["message_ts"]
    with pytest.raises(SlackApiError) as err:
        await client.chat_update(channel="C0001", ts=sent["message_ts"], text="x")
    assert err.value.response["error"] == "message_not_found"
    posted = await client.chat_postMessage(channel="C0001", text="x")
    link = await client.chat_getPermalink(channel="C0001", message_ts=posted["ts"])
    assert link["permalink"].endswith(posted["ts"].replace(".", ""))


async def test_files_upload_v2(slack: SlackDouble, client: AsyncWebClient) -> None:
    response = await client.files_upload_v2(
        channel="C0001", filename="audit.csv", content="id,state\n42,approved\n", title="Audit"
    )
    file_id = response["file"]["id"]
    assert slack.uploads[file_id] == b"id,state\n42,approved\n"
    assert slack.files[file_id]["channel"] == "C0001"
    assert slack.files[file_id]["title"] == "Audit"
    # The share is a message in the channel that carries the file.
    history = await client.conversations_history(channel="C0001")
    shared = [m for m in history["messages"] if m.get("files")]
    assert [f["name"] for m in shared for f in m["files"]] == ["audit.csv"]


async def test_conversations_replies_lists_the_thread_with_metadata_on_request(
    slack: SlackDouble, client: AsyncWebClient
) -> None:
    parent = await client.chat_postMessage(channel="C0001", text="parent")
    meta = {"event_type": "e", "event_payload": {"n": "1"}}
    await client.chat_postMessage(channel="C0001", text="reply", thread_ts=parent["ts"], metadata=meta)
    await client.chat_postMessage(channel="C0001", text="elsewhere")
    plain = await client.conversations_replies(channel="C0001", ts=parent["ts"])
    assert [m["text"] for m in plain["messages"]] == ["parent", "reply"]
    assert "metadata" not in plain["messages"][1]
    full = await client.conversations_replies(channel="C0001", ts=parent["ts"], include_all_metadata=True)
    assert full["messages"][1]["metadata"] == meta
    with pytest.raises(SlackApiError) as err:
        await client.conversations_replies(channel="C0001", ts="1.000001")
    assert err.value.response["error"] == "thread_not_found"


async def test_response_url_sink_replaces_original(slack: SlackDouble, client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="C0001", text="Approval needed")
    url = slack.response_url(channel="C0001", ts=posted["ts"])
    assert url.startswith(slack.response_url_base)
    webhook = AsyncWebhookClient(url)
    result = await webhook.send(text="Approved", replace_original=True)
    assert (result.status_code, result.body) == (200, "ok")
    assert slack.responses[0]["json"] == {"text": "Approved", "replace_original": True}
    assert slack.message("C0001", posted["ts"])["text"] == "Approved"
    command_url = slack.origin + "/commands/T0001/1/abc"
    assert (await AsyncWebhookClient(command_url).send(text="hi")).body == "ok"
    assert slack.responses[1]["path"] == "/commands/T0001/1/abc"


async def test_response_url_rejects_bad_posts_and_can_be_scripted(slack: SlackDouble) -> None:
    posted_ts = (
        await AsyncWebClient(token="xoxb-test", base_url=slack.base_url).chat_postMessage(
            channel="C0001", text="Approval needed"
        )
    )["ts"]
    webhook = AsyncWebhookClient(slack.response_url(channel="C0001", ts=posted_ts))
    bad = await webhook.send(text="x", blocks=[_raw_section("x" * 3001)])
    assert (bad.status_code, bad.body) == (400, "invalid_blocks")
    slack.fail("response_url", status=404, error="expired_url", retry_after=None)
    assert (await webhook.send(text="late")).status_code == 404
    assert (await webhook.send(delete_original=True)).body == "ok"
    assert slack.message("C0001", posted_ts)["deleted"] is True
    assert [r["status"] for r in slack.responses] == [400, 404, 200]
    assert [r["use"] for r in slack.responses] == [1, 2, 3]


async def test_lenient_channels_and_reset() -> None:
    async with SlackDouble() as double:
        client = AsyncWebClient(token="xoxb-test", base_url=double.base_url)
        await client.chat_postMessage(channel="C0ANY", text="x")
        with pytest.raises(SlackApiError):
            await client.chat_postMessage(channel="#general", text="x")
        double.reset()
        assert double.calls() == []
        assert double.messages == {}


def test_subprocess_double_serves_and_reports_calls() -> None:
    with SlackDoubleProcess(users=USERS, channels={"C0001"}) as remote:

        async def scenario() -> None:
            client = AsyncWebClient(token="xoxb-test", base_url=remote.base_url)
            await client.chat_postMessage(channel="C0001", text="from another process")
            remote.fail("chat.postMessage", status=429, retry_after=3)
            with pytest.raises(SlackApiError) as err:
                await client.chat_postMessage(channel="C0001", text="limited")
            assert err.value.response.headers["Retry-After"] == "3"

        asyncio.run(scenario())
        calls = remote.calls("chat.postMessage")
        assert [c.status for c in calls] == [200, 429]
        assert calls[0].params["text"] == "from another process"
        assert remote.messages()[0]["text"] == "from another process"
        remote.reset()
        assert remote.calls() == []


async def test_socket_mode_roundtrip_via_apps_connections_open(slack: SlackDouble) -> None:
    async with SocketModeDouble() as sock:
        slack.socket_mode_url = sock.url
        web_client = AsyncWebClient(base_url=slack.base_url)
        client = SocketModeClient(app_token="xapp-test", web_client=web_client)

        async def on_request(sm: SocketModeClient, req: SocketModeRequest) -> None:
            payload = {"text": f"got {req.payload['command']}"} if req.accepts_response_payload else None
            await sm.send_socket_mode_response(
                SocketModeResponse(envelope_id=req.envelope_id, payload=payload)
            )

        client.socket_mode_request_listeners.append(on_request)  # type: ignore[arg-type]
        try:
            await client.connect()  # type: ignore[no-untyped-call]
            await sock.wait_connected()
            fields = signing.slash_command_fields(user_id="U0OPS", text="status")
            ack = await sock.send_envelope("slash_commands", fields, accepts_response_payload=True)
            assert ack["payload"] == {"text": "got /agent"}
            event = signing.event_callback_payload(signing.app_home_opened_event("U0A"))
            ack = await sock.send_envelope("events_api", event, retry_attempt=1, retry_reason="timeout")
            assert set(ack) == {"envelope_id"}
        finally:
            await client.close()  # type: ignore[no-untyped-call]
    call = slack.calls("apps.connections.open")[0]
    assert call.headers["authorization"] == "Bearer xapp-test"
    assert sock.received[0]["envelope_id"]


async def test_bot_token_cannot_open_socket_connections(slack: SlackDouble, client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        await client.apps_connections_open(app_token="xoxb-test")
    assert err.value.response["error"] == "not_allowed_token_type"


async def test_form_encoded_json_params_are_decoded(slack: SlackDouble) -> None:
    # Hand-rolled form posts send blocks as a JSON string; Slack decodes them, so does the double.
    form = urllib.parse.urlencode({"channel": "C0001", "blocks": json.dumps([_raw_section("x" * 3001)])})
    headers = {"Authorization": "Bearer xoxb-test", "Content-Type": "application/x-www-form-urlencoded"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(slack.base_url + "chat.postMessage", data=form, headers=headers) as resp,
    ):
        body = await resp.json()
    assert body["error"] == "invalid_blocks"
    assert slack.calls()[0].params["blocks"][0]["type"] == "section"
