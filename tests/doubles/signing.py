"""Inbound Slack requests (slash commands, interactivity, events) built and signed exactly as Slack does.

Every builder returns the raw body bytes plus headers. POST those bytes unchanged: the signature
covers them byte for byte, so re-encoding the body (e.g. passing a dict to an HTTP client) breaks it.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import time
import urllib.parse
from typing import Any, NamedTuple

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"

TEAM_ID = "T0001"
TEAM_DOMAIN = "acme"
API_APP_ID = "A0001"
BOT_ID = "B0001"
# The legacy verification token: Slack still sends it, nothing should rely on it.
VERIFICATION_TOKEN = "XXYYZZ"
DEFAULT_MESSAGE_TS = "1700000000.000200"

_trigger_counter = itertools.count(1)


class SignedRequest(NamedTuple):
    """Raw body and headers; unpacks as ``body, headers = slash_command(...)``."""

    body: bytes
    headers: dict[str, str]


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """Return the ``X-Slack-Signature`` value Slack would send for this body at this timestamp."""
    raw = body.encode() if isinstance(body, str) else body
    basestring = b"v0:" + str(timestamp).encode() + b":" + raw
    return "v0=" + hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str,
    body: bytes | str,
    *,
    timestamp: int | str | None = None,
    content_type: str = FORM_CONTENT_TYPE,
) -> dict[str, str]:
    """Headers for a signed Slack request; ``timestamp`` defaults to now (override for stale/future)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sign(secret, ts, body),
    }


def new_trigger_id() -> str:
    """A fresh trigger_id in Slack's ``<ts>.<team-ish>.<hex>`` shape, unique within the process."""
    return f"{int(time.time())}.{next(_trigger_counter)}.{secrets.token_hex(8)}"


def slack_user(user_id: str, user_name: str | None = None) -> dict[str, str]:
    """The ``user`` object Slack puts in interactivity payloads."""
    name = user_name or user_id.lower()
    return {"id": user_id, "username": name, "name": name, "team_id": TEAM_ID}


# -- slash commands (§2.1) ---------------------------------------------------------------------


def slash_command_fields(
    *,
    user_id: str,
    text: str,
    command: str = "/agent",
    channel_id: str = "C0OPS",
    channel_name: str = "ops",
    user_name: str | None = None,
    response_url: str = "https://hooks.slack.com/commands/T0001/111/abc",
    trigger_id: str | None = None,
) -> dict[str, str]:
    """Slash-command fields in Slack's field order (also the Socket Mode ``slash_commands`` payload)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": TEAM_ID,
        "team_domain": TEAM_DOMAIN,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name or user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": API_APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or new_trigger_id(),
    }


def slash_command(
    secret: str,
    *,
    user_id: str,
    text: str,
    command: str = "/agent",
    channel_id: str = "C0OPS",
    channel_name: str = "ops",
    user_name: str | None = None,
    response_url: str = "https://hooks.slack.com/commands/T0001/111/abc",
    trigger_id: str | None = None,
    timestamp: int | str | None = None,
) -> SignedRequest:
    """A signed, form-encoded slash command request."""
    fields = slash_command_fields(
        user_id=user_id,
        text=text,
        command=command,
        channel_id=channel_id,
        channel_name=channel_name,
        user_name=user_name,
        response_url=response_url,
        trigger_id=trigger_id,
    )
    return _signed_form(secret, urllib.parse.urlencode(fields), timestamp)


# -- interactivity (§2.2-§2.4) -----------------------------------------------------------------


def block_action_payload(
    *,
    user_id: str,
    action_id: str,
    value: str,
    block_id: str = "actions",
    channel_id: str = "C0001",
    message_ts: str = DEFAULT_MESSAGE_TS,
    response_url: str = "https://hooks.slack.com/actions/T0001/333/xyz",
    trigger_id: str | None = None,
    message: dict[str, Any] | None = None,
    view: dict[str, Any] | None = None,
    user_name: str | None = None,
    button_text: str = "Button",
    state_values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` payload for a button click.

    With ``view`` the click comes from a modal or the Home tab: Slack then sends the view and no
    ``message``, ``channel`` or ``response_url``.
    """
    action = {
        "action_id": action_id,
        "block_id": block_id,
        "text": {"type": "plain_text", "text": button_text, "emoji": True},
        "value": value,
        "type": "button",
        "action_ts": f"{time.time():.6f}",
    }
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": slack_user(user_id, user_name),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or new_trigger_id(),
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "state": {"values": state_values or {}},
        "actions": [action],
    }
    if view is not None:
        payload["container"] = {"type": "view", "view_id": view.get("id", "V0001")}
        payload["view"] = view
        return payload
    payload["container"] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel_id,
        "is_ephemeral": False,
    }
    payload["channel"] = {"id": channel_id, "name": "agent-approvals"}
    payload["message"] = message or {
        "type": "message",
        "subtype": "bot_message",
        "text": "Approval needed",
        "ts": message_ts,
        "bot_id": BOT_ID,
        "app_id": API_APP_ID,
        "team": TEAM_ID,
        "blocks": [],
    }
    payload["response_url"] = response_url
    return payload


def block_action(
    secret: str,
    *,
    user_id: str,
    action_id: str,
    value: str,
    block_id: str = "actions",
    channel_id: str = "C0001",
    message_ts: str = DEFAULT_MESSAGE_TS,
    response_url: str = "https://hooks.slack.com/actions/T0001/333/xyz",
    trigger_id: str | None = None,
    message: dict[str, Any] | None = None,
    view: dict[str, Any] | None = None,
    user_name: str | None = None,
    button_text: str = "Button",
    state_values: dict[str, Any] | None = None,
    timestamp: int | str | None = None,
) -> SignedRequest:
    """A signed ``block_actions`` request (form field ``payload=<url-encoded JSON>``)."""
    payload = block_action_payload(
        user_id=user_id,
        action_id=action_id,
        value=value,
        block_id=block_id,
        channel_id=channel_id,
        message_ts=message_ts,
        response_url=response_url,
        trigger_id=trigger_id,
        message=message,
        view=view,
        user_name=user_name,
        button_text=button_text,
        state_values=state_values,
    )
    return interactive(secret, payload, timestamp=timestamp)


def view_payload(
    *,
    callback_id: str,
    private_metadata: str = "",
    state_values: dict[str, Any] | None = None,
    view_id: str = "V0001",
    blocks: list[dict[str, Any]] | None = None,
    title: str = "Countersign",
    view_hash: str = "1700000002.Ab12Cd34",
) -> dict[str, Any]:
    """The ``view`` object Slack embeds in view_submission / view_closed / block_actions payloads."""
    return {
        "id": view_id,
        "team_id": TEAM_ID,
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": private_metadata,
        "title": {"type": "plain_text", "text": title},
        "submit": {"type": "plain_text", "text": "Submit"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks or [],
        "state": {"values": state_values or {}},
        "hash": view_hash,
        "clear_on_close": False,
        "notify_on_close": True,
        "previous_view_id": None,
        "root_view_id": view_id,
        "app_id": API_APP_ID,
        "external_id": "",
        "app_installed_team_id": TEAM_ID,
        "bot_id": BOT_ID,
    }


def view_submission_payload(
    *,
    user_id: str,
    callback_id: str,
    private_metadata: str = "",
    state_values: dict[str, Any] | None = None,
    view_id: str = "V0001",
    blocks: list[dict[str, Any]] | None = None,
    trigger_id: str | None = None,
    response_urls: list[dict[str, Any]] | None = None,
    user_name: str | None = None,
) -> dict[str, Any]:
    """A ``view_submission`` payload; ``state_values`` is ``{block_id: {action_id: {...}}}``."""
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": slack_user(user_id, user_name),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or new_trigger_id(),
        "view": view_payload(
            callback_id=callback_id,
            private_metadata=private_metadata,
            state_values=state_values,
            view_id=view_id,
            blocks=blocks,
        ),
        "response_urls": response_urls or [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def view_submission(
    secret: str,
    *,
    user_id: str,
    callback_id: str,
    private_metadata: str = "",
    state_values: dict[str, Any] | None = None,
    view_id: str = "V0001",
    blocks: list[dict[str, Any]] | None = None,
    trigger_id: str | None = None,
    response_urls: list[dict[str, Any]] | None = None,
    user_name: str | None = None,
    timestamp: int | str | None = None,
) -> SignedRequest:
    """A signed ``view_submission`` request."""
    payload = view_submission_payload(
        user_id=user_id,
        callback_id=callback_id,
        private_metadata=private_metadata,
        state_values=state_values,
        view_id=view_id,
        blocks=blocks,
        trigger_id=trigger_id,
        response_urls=response_urls,
        user_name=user_name,
    )
    return interactive(secret, payload, timestamp=timestamp)


def view_closed(
    secret: str,
    *,
    user_id: str,
    callback_id: str,
    private_metadata: str = "",
    view_id: str = "V0001",
    timestamp: int | str | None = None,
) -> SignedRequest:
    """A signed ``view_closed`` request (Slack sends it only for views with notify_on_close)."""
    payload = {
        "type": "view_closed",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": slack_user(user_id),
        "api_app_id": API_APP_ID,
        "token": VERIFICATION_TOKEN,
        "view": view_payload(callback_id=callback_id, private_metadata=private_metadata, view_id=view_id),
        "is_cleared": False,
        "is_enterprise_install": False,
    }
    return interactive(secret, payload, timestamp=timestamp)


def interactive(secret: str, payload: dict[str, Any], *, timestamp: int | str | None = None) -> SignedRequest:
    """Sign any interactivity payload the way Slack sends it: one form field ``payload``."""
    return _signed_form(secret, urllib.parse.urlencode({"payload": json.dumps(payload)}), timestamp)


# -- Events API (§2.5, §2.6) -------------------------------------------------------------------


def app_home_opened_event(
    user_id: str, *, tab: str = "home", view: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The inner ``event`` of app_home_opened; ``view`` only if a Home view was published before."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": user_id,
        "channel": "D" + user_id[1:],
        "tab": tab,
        "event_ts": f"{time.time():.6f}",
    }
    if view is not None:
        event["view"] = view
    return event


def event_callback_payload(
    event: dict[str, Any], *, event_id: str = "Ev0001", event_time: int | None = None
) -> dict[str, Any]:
    """The ``event_callback`` envelope around ``event`` (also the Socket Mode ``events_api`` payload)."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": TEAM_ID,
        "api_app_id": API_APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": TEAM_ID,
                "user_id": "U0BOT",
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6ImFwcF9ob21lX29wZW5lZCJ9",
    }


def event_callback(
    secret: str,
    event: dict[str, Any],
    *,
    event_id: str = "Ev0001",
    event_time: int | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
    timestamp: int | str | None = None,
) -> SignedRequest:
    """A signed Events API delivery; ``retry_num`` (1-3) makes it a redelivery, as Slack marks them."""
    body = _compact_json(event_callback_payload(event, event_id=event_id, event_time=event_time))
    headers = signed_headers(secret, body, timestamp=timestamp, content_type=JSON_CONTENT_TYPE)
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    return SignedRequest(body, headers)


def url_verification(secret: str, challenge: str, *, timestamp: int | str | None = None) -> SignedRequest:
    """A signed url_verification request; Bolt checks the signature before answering the challenge."""
    body = _compact_json({"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"})
    return SignedRequest(
        body, signed_headers(secret, body, timestamp=timestamp, content_type=JSON_CONTENT_TYPE)
    )


def _compact_json(payload: dict[str, Any]) -> bytes:
    # Slack sends compact JSON; the exact bytes matter only because they are what gets signed.
    return json.dumps(payload, separators=(",", ":")).encode()


def _signed_form(secret: str, form: str, timestamp: int | str | None) -> SignedRequest:
    body = form.encode()
    return SignedRequest(body, signed_headers(secret, body, timestamp=timestamp))
