"""A local aiohttp double of the Slack Web API that the real slack_sdk clients can talk to.

It rejects what Slack rejects (tokens, scopes, Block Kit limits, unknown messages), records every
call, scripts faults (429 + Retry-After, 5xx, slow answers), and serves response_url and upload URLs.
"""

from __future__ import annotations

from tests.doubles.slack_api.block_kit import (
    MAX_MESSAGE_BLOCKS,
    MAX_VIEW_BLOCKS,
    Problem,
    blocks_problems,
    invalid_arguments,
    invalid_blocks,
    view_problems,
)
from tests.doubles.slack_api.calls import Call, Handler
from tests.doubles.slack_api.messages import MAX_TEXT
from tests.doubles.slack_api.process import REPO_ROOT, SlackDoubleProcess, serve_forever
from tests.doubles.slack_api.server import SlackDouble
from tests.doubles.slack_api.workspace import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_TOKEN,
    DEFAULT_SCOPES,
    JSON,
    TEAM_DOMAIN,
    TEAM_ID,
)

__all__ = [
    "APP_ID",
    "BOT_ID",
    "BOT_USER_ID",
    "DEFAULT_APP_TOKEN",
    "DEFAULT_BOT_TOKEN",
    "DEFAULT_SCOPES",
    "JSON",
    "MAX_MESSAGE_BLOCKS",
    "MAX_TEXT",
    "MAX_VIEW_BLOCKS",
    "REPO_ROOT",
    "TEAM_DOMAIN",
    "TEAM_ID",
    "Call",
    "Handler",
    "Problem",
    "SlackDouble",
    "SlackDoubleProcess",
    "blocks_problems",
    "invalid_arguments",
    "invalid_blocks",
    "serve_forever",
    "view_problems",
]
