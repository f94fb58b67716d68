"""Modal submissions: Edit (approves the edited text) and Reject (needs a reason)."""

from __future__ import annotations

import json
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import DecisionRefused
from bot.review import EditForm, parse_value
from bot.schemas import clean_text, is_blank
from handlers import ids
from handlers.context import ack_when_done, errors_after_ack_logged, services


def _value(view: dict[str, Any], block: str, action: str) -> str:
    state = view.get("state", {}).get("values", {})
    return str(state.get(block, {}).get(action, {}).get("value") or "")


def _meta(view: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except (ValueError, RecursionError):
        raise DecisionRefused("This form is not one of Countersign's.") from None
    if not isinstance(meta, dict):
        raise DecisionRefused("This form is not one of Countersign's.")
    parse_value(f"{meta.get('draft_id')}:{meta.get('version')}")
    return meta


async def _notify(client: AsyncWebClient, meta: dict[str, Any], user: str, text: str) -> None:
    """Modals have no response_url: tell the user privately in the draft's channel, or by DM."""
    channel = meta.get("channel") or user
    await client.chat_postEphemeral(channel=channel, user=user, text=text)


async def edit_submitted(
    ack: AsyncAck,
    body: dict[str, Any],
    view: dict[str, Any],
    context: AsyncBoltContext,
    client: AsyncWebClient,
) -> None:
    text = _value(view, ids.EDIT_BODY_BLOCK, ids.EDIT_BODY_INPUT)
    amount_text = _value(view, ids.EDIT_AMOUNT_BLOCK, ids.EDIT_AMOUNT_INPUT)
    errors = {}
    try:
        clean_text(text)
    except ValueError as exc:
        errors[ids.EDIT_BODY_BLOCK] = str(exc)
    if is_blank(text):
        errors[ids.EDIT_BODY_BLOCK] = "The reply cannot be empty."
    try:
        meta = _meta(view)
    except DecisionRefused as refused:
        errors[ids.EDIT_BODY_BLOCK] = refused.message
        meta = {}
    if errors:
        await ack(response_action="errors", errors=errors)
        return
    user = body["user"]["id"]
    form = EditForm(
        draft_id=meta["draft_id"],
        version=int(meta["version"]),
        body=text,
        amount_text=amount_text.strip() or None,
        category=meta.get("category") if isinstance(meta.get("category"), str) else None,
    )
    reviewing = services(context).reviewing
    try:
        problem = await reviewing.edited_amount_problem(form)
    except DecisionRefused as refused:
        problem = refused.message
    if problem:  # the modal stays open with the reviewer's edit in it
        await ack(response_action="errors", errors={ids.EDIT_AMOUNT_BLOCK: problem})
        return
    try:
        outcome = await ack_when_done(ack, reviewing.approve_edited(user=user, form=form))
    except DecisionRefused as refused:
        await _notify(client, meta, user, refused.message)
        return
    await _notify(client, meta, user, outcome.message)


async def reject_submitted(
    ack: AsyncAck,
    body: dict[str, Any],
    view: dict[str, Any],
    context: AsyncBoltContext,
    client: AsyncWebClient,
) -> None:
    reason = _value(view, ids.REJECT_REASON_BLOCK, ids.REJECT_REASON_INPUT)
    try:
        meta = _meta(view)
        clean_text(reason)
    except (DecisionRefused, ValueError) as exc:
        await ack(response_action="errors", errors={ids.REJECT_REASON_BLOCK: str(exc)})
        return
    if is_blank(reason):
        await ack(response_action="errors", errors={ids.REJECT_REASON_BLOCK: "A reason is required."})
        return
    user = body["user"]["id"]
    try:
        outcome = await ack_when_done(
            ack,
            services(context).reviewing.reject(
                user=user, draft_id=meta["draft_id"], version=int(meta["version"]), reason=reason
            ),
        )
    except DecisionRefused as refused:
        await _notify(client, meta, user, refused.message)
        return
    await _notify(client, meta, user, outcome.message)


def register(app: AsyncApp) -> None:
    app.view(ids.EDIT_MODAL)(errors_after_ack_logged(edit_submitted))
    app.view(ids.REJECT_MODAL)(errors_after_ack_logged(reject_submitted))
