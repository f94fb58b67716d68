"""Button clicks on draft messages and manual-queue items: decide, ack, tell the clicker."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.models.views import View
from slack_sdk.web.async_client import AsyncWebClient

from bot.decisions import Outcome
from bot.errors import DecisionRefused
from bot.policy import from_minor
from bot.settings import currency_exponent
from handlers import blocks, ids
from handlers.context import ack_when_done, errors_after_ack_logged, services

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
    channel = body.get("channel", {}).get("id")
    meta = blocks.metadata(draft.id, draft.version, channel, draft.slack_ts, draft.category)
    view = blocks.edit_modal(
        draft_id=draft.id, version=draft.version, body=draft.body, amount=amount, meta=meta
    )
    await _open(client, respond, body["trigger_id"], view)


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
    await _open(client, respond, body["trigger_id"], blocks.reject_modal(meta=meta))


async def _open(client: AsyncWebClient, respond: AsyncRespond, trigger_id: str, view: View) -> None:
    """Open a modal; when Slack refuses (a trigger_id older than 3 s, say), tell the clicker why."""
    try:
        await client.views_open(trigger_id=trigger_id, view=view)
    except SlackApiError as exc:
        error = exc.response.get("error") if hasattr(exc.response, "get") else "unknown"
        await _tell(respond, f"Slack did not open the form ({error}); nothing was decided. Click again.")


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
    app.action(ids.APPROVE)(errors_after_ack_logged(approve))
    app.action(ids.EDIT)(errors_after_ack_logged(edit))
    app.action(ids.REJECT)(errors_after_ack_logged(reject))
    app.action(ids.RETRY)(errors_after_ack_logged(retry))
    app.action(ids.CLAIM)(errors_after_ack_logged(claim))
    app.action(ids.DONE)(errors_after_ack_logged(done))
    app.action(ids.HOME_PAUSE)(errors_after_ack_logged(home_pause))
    app.action(ids.HOME_RESUME)(errors_after_ack_logged(home_resume))
