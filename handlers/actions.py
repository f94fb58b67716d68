"""Button clicks on draft messages and manual-queue items: decide, ack, tell the clicker."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.decisions import Outcome
from bot.errors import DecisionRefused
from bot.policy import from_minor
from bot.settings import currency_exponent
from handlers import blocks, ids
from handlers.context import ack_when_done, services

log = logging.getLogger(__name__)


async def _tell(respond: AsyncRespond, text: str) -> None:
    await respond(text=text, response_type="ephemeral", replace_original=False)


async def _answer(ack: AsyncAck, respond: AsyncRespond, decision: Awaitable[Outcome]) -> None:
    """Decide, ack, then tell the clicker privately what their click did (or why it did nothing)."""
    try:
        outcome = await ack_when_done(ack, decision)
    except DecisionRefused as refused:
        await _tell(respond, refused.message)
        return
    await _tell(respond, outcome.message)


async def approve(
    ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond
) -> None:
    reviewing = services(context).reviewing
    await _answer(ack, respond, reviewing.approve(user=body["user"]["id"], value=body["actions"][0]["value"]))


async def retry(
    ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond
) -> None:
    reviewing = services(context).reviewing
    await _answer(ack, respond, reviewing.retry(user=body["user"]["id"], value=body["actions"][0]["value"]))


async def edit(
    ack: AsyncAck,
    body: dict[str, Any],
    context: AsyncBoltContext,
    respond: AsyncRespond,
    client: AsyncWebClient,
) -> None:
    await ack()
    try:
        draft, category = await services(context).reviewing.draft_for_edit(
            user=body["user"]["id"], value=body["actions"][0]["value"]
        )
    except DecisionRefused as refused:
        await _tell(respond, refused.message)
        return
    amount = None
    if draft.amount_minor is not None:
        amount = str(from_minor(draft.amount_minor, currency_exponent(draft.currency or category.currency)))
    meta = blocks.metadata(draft.id, draft.version, body.get("channel", {}).get("id"), draft.slack_ts)
    view = blocks.edit_modal(
        draft_id=draft.id, version=draft.version, body=draft.body, amount=amount, meta=meta
    )
    await client.views_open(trigger_id=body["trigger_id"], view=view)


async def reject(
    ack: AsyncAck,
    body: dict[str, Any],
    context: AsyncBoltContext,
    respond: AsyncRespond,
    client: AsyncWebClient,
) -> None:
    await ack()
    try:
        draft, _ = await services(context).reviewing.draft_for_review(
            user=body["user"]["id"], value=body["actions"][0]["value"]
        )
    except DecisionRefused as refused:
        await _tell(respond, refused.message)
        return
    meta = blocks.metadata(draft.id, draft.version, body.get("channel", {}).get("id"), draft.slack_ts)
    await client.views_open(trigger_id=body["trigger_id"], view=blocks.reject_modal(meta=meta))


async def claim(
    ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond
) -> None:
    await _manual(ack, body, context, respond, "claim")


async def done(ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond) -> None:
    await _manual(ack, body, context, respond, "handled")


async def _manual(
    ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, respond: AsyncRespond, action: str
) -> None:
    reviewing = services(context).reviewing
    await _answer(
        ack,
        respond,
        reviewing.manual(user=body["user"]["id"], value=body["actions"][0]["value"], action=action),
    )


async def home_pause(
    ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
) -> None:
    await _home_toggle(ack, body, context, client, "pause")


async def home_resume(
    ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient
) -> None:
    await _home_toggle(ack, body, context, client, "resume")


async def _home_toggle(
    ack: AsyncAck, body: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient, verb: str
) -> None:
    """App Home buttons run the same command, with the same permissions, as /agent."""
    user, agent = body["user"]["id"], body["actions"][0]["value"]
    control = services(context).control
    answer = await ack_when_done(ack, control.run(user=user, text=f"{verb} {agent} via App Home"))
    await client.chat_postMessage(channel=user, text=answer)
    await client.views_publish(user_id=user, view=blocks.home_view(await control.home(user=user)))


def register(app: AsyncApp) -> None:
    app.action(ids.APPROVE)(approve)
    app.action(ids.EDIT)(edit)
    app.action(ids.REJECT)(reject)
    app.action(ids.RETRY)(retry)
    app.action(ids.CLAIM)(claim)
    app.action(ids.DONE)(done)
    app.action(ids.HOME_PAUSE)(home_pause)
    app.action(ids.HOME_RESUME)(home_resume)
