"""Target `payload`: a signed Slack request body, decoded as the app decodes it.

Input: the request body (a form body `payload=<JSON>`, or JSON). Bolt's `parse_body` turns it
into a dict; then the app's own decoders read it: a button's `value` (bot.review.parse_value)
and a modal's state and `private_metadata` (handlers.views). Slack guarantees the shape of
what it sends (objects where it documents objects, strings where it documents strings), so
inputs of another shape are skipped; every *value* is the fuzzer's. The decoders may refuse
with DecisionRefused and nothing else.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from slack_bolt.request.internals import parse_body

from bot.errors import DecisionRefused
from bot.review import parse_value
from handlers import ids
from handlers.views import _meta, _value

FORM = "application/x-www-form-urlencoded"
MODAL_INPUTS = (
    (ids.EDIT_BODY_BLOCK, ids.EDIT_BODY_INPUT),
    (ids.EDIT_AMOUNT_BLOCK, ids.EDIT_AMOUNT_INPUT),
    (ids.REJECT_REASON_BLOCK, ids.REJECT_REASON_INPUT),
)


def _slack_shaped_view(view: Any) -> TypeGuard[dict[str, Any]]:
    """state.values is {block: {action: {…, "value": str}}} and private_metadata a string."""
    if not isinstance(view, dict) or not isinstance(view.get("private_metadata", ""), str):
        return False
    state = view.get("state", {})
    values = state.get("values", {}) if isinstance(state, dict) else None
    if not isinstance(values, dict):
        return False
    for block in values.values():
        if not isinstance(block, dict):
            return False
        for element in block.values():
            if not isinstance(element, dict) or not isinstance(element.get("value", ""), str | None):
                return False
    return True


def decode(body: str) -> dict[str, Any] | None:
    """What Bolt hands the listeners; None for what Bolt itself refuses or cannot route."""
    try:
        payload = parse_body(body, FORM)
    except (ValueError, RecursionError):  # Bolt's own JSON decoding, after the signature check
        return None
    return payload if isinstance(payload, dict) else None


def one_input(data: bytes) -> None:
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # refused before Bolt (fuzz.signature covers that)
    payload = decode(body)
    if payload is None:
        return
    actions = payload.get("actions")
    if payload.get("type") == "block_actions" and isinstance(actions, list) and actions:
        action = actions[0]
        if isinstance(action, dict) and isinstance(action.get("value"), str | None):
            try:
                draft_id, version = parse_value(action.get("value"))  # type: ignore[arg-type]
            except DecisionRefused:
                pass
            else:
                assert draft_id.startswith("d_") and 0 <= version <= 999_999
    view = payload.get("view")
    if payload.get("type") == "view_submission" and _slack_shaped_view(view):
        for block, action_id in MODAL_INPUTS:
            assert isinstance(_value(view, block, action_id), str)
        try:
            meta = _meta(view)
        except DecisionRefused:
            return
        # What edit_submitted / reject_submitted do with it next.
        assert isinstance(meta["draft_id"], str)
        int(meta["version"])
