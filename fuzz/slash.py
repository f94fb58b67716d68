"""Target `slash`: the `/agent` command text, run through the real Control use-case.

Input: `USER\\nTEXT`, USER one of a few users Slack could report (admin, reviewer, guest,
outsider; anything else counts as the outsider), TEXT the command text as Bolt hands it over
(form-decoded, so invalid UTF-8 has become U+FFFD). Control runs against a SQLite database of
its own with one registered agent; Slack's users.info answers come from the Directory's cache.
`Control.run` promises an answer for every text: anything it raises is a crash.
"""

from __future__ import annotations

import asyncio
import atexit
from datetime import UTC, datetime
from functools import cache

from slack_sdk.web.async_client import AsyncWebClient

from bot.control import Control
from bot.policy import Reviewer
from bot.runtime import Runtime
from bot.slack import Directory
from fuzz.config import settings
from storage import migrate
from storage.db import create_db_engine, transaction
from storage.tables import Agent

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
OUTSIDER = "U0OUT"
USERS = {
    "U0ADMIN": Reviewer("U0ADMIN"),
    "U0ALICE": Reviewer("U0ALICE"),
    "U0GUEST": Reviewer("U0GUEST", is_guest=True),
    OUTSIDER: Reviewer(OUTSIDER),
}


@cache
def control() -> Control:
    engine = create_db_engine(settings().database_url)
    migrate.upgrade(engine)
    with transaction(engine) as session:
        session.add(
            Agent(
                name="support-bot",
                categories="refund,reply",
                callback_prefixes="[]",
                callback_secret="whsec_AAAA",  # noqa: S106
                created_at=NOW,
            )
        )
    rt = Runtime(engine=engine, config=settings().config, clock=lambda: NOW)
    # Nothing reaches Slack: every user the target uses is already in the cache.
    directory = Directory(client=AsyncWebClient(base_url="http://127.0.0.1:9/"), ttl=float("inf"))
    directory._users.update({user: (0.0, who) for user, who in USERS.items()})
    return Control(rt=rt, directory=directory)


@cache
def runner() -> asyncio.Runner:
    loop = asyncio.Runner()
    atexit.register(loop.close)
    return loop


def one_input(data: bytes) -> None:
    user_line, _, text_bytes = data.partition(b"\n")
    user = user_line.decode("ascii", "replace")
    user = user if user in USERS else OUTSIDER
    text = text_bytes.decode("utf-8", "replace")
    answer = runner().run(control().run(user=user, text=text))
    assert isinstance(answer, str) and answer
