"""The /agent slash command: parse the text, run one control use-case, answer privately."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond

from bot.control import HELP
from handlers import ids
from handlers.context import ack_when_done, errors_after_ack_logged, services


async def agent_command(
    ack: AsyncAck, command: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond
) -> None:
    control = services(context).control
    text = await ack_when_done(
        ack,
        control.run(user=command["user_id"], text=command.get("text") or ""),
        late_text="Still applying it (the database is slow); the answer follows.",
    )
    await respond(text=text or HELP, response_type="ephemeral")


def register(app: AsyncApp) -> None:
    app.command(ids.COMMAND)(errors_after_ack_logged(agent_command))
