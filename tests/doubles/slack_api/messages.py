"""Message records: what Slack rejects in a message, how a post or an update is stored, how it reads back."""

from __future__ import annotations

from tests.doubles.slack_api.block_kit import (
    MAX_BLOCKS_TEXT,
    MAX_MESSAGE_BLOCKS,
    blocks_problems,
    blocks_text_length,
    invalid_blocks,
)
from tests.doubles.slack_api.calls import _error
from tests.doubles.slack_api.workspace import APP_ID, BOT_ID, BOT_USER_ID, JSON, TEAM_ID

MAX_TEXT = 40_000


def _message_problem(params: JSON) -> JSON | None:
    blocks, text = params.get("blocks"), params.get("text")
    if not text and not blocks and not params.get("attachments"):
        return _error("no_text")
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return _error("msg_too_long")
    if blocks is not None:
        if not isinstance(blocks, list):
            return _error("invalid_blocks_format")
        problems = blocks_problems(blocks, pointer="/blocks", max_blocks=MAX_MESSAGE_BLOCKS)
        if problems:
            return invalid_blocks(problems)
        if blocks_text_length(blocks) > MAX_BLOCKS_TEXT:
            return _error("msg_blocks_too_long")
    return None


def _apply_content(record: JSON, params: JSON, *, replacing: bool) -> None:
    if not replacing or "text" in params:
        record["text"] = params.get("text") or ""
    # Slack drops the old blocks when an update (or replace_original) sends text without blocks.
    record["blocks"] = params.get("blocks") or []
    record["attachments"] = params.get("attachments") or []
    if not replacing or "metadata" in params:
        record["metadata"] = params.get("metadata")


def _wire_message(record: JSON) -> JSON:
    message: JSON = {
        "type": "message",
        "subtype": "bot_message",
        "text": record["text"],
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "app_id": APP_ID,
        "team": TEAM_ID,
        "ts": record["ts"],
        "blocks": record["blocks"],
    }
    for key in ("thread_ts", "metadata", "files"):
        if record.get(key):
            message[key] = record[key]
    if record["attachments"]:
        message["attachments"] = record["attachments"]
    if record["history"]:
        message["edited"] = {"user": BOT_USER_ID, "ts": record["edited_ts"]}
    return message
