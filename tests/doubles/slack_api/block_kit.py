"""Block Kit validation, as Slack does it server-side: its limits, json-pointers and error shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

from tests.doubles.slack_api.workspace import JSON

# slack_sdk's model classes check most limits client-side, but dict blocks go out unchecked and
# nothing checks the per-message block count, so the double is the last line (§5).

Problem: TypeAlias = tuple[str, str]  # (message, json-pointer)

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
# The text of a message's blocks, added up: past it Slack answers `msg_blocks_too_long`. Slack
# documents no number ("12,000 text characters with a buffer for block containers", a Slack
# engineer in bolt-js#2509); the smallest total seen refused is 11,341 (bolt-js#2867).
MAX_BLOCKS_TEXT = 11_000
_BUTTON_STYLES = ("primary", "danger")
_SELECTS = (
    "static_select",
    "external_select",
    "users_select",
    "conversations_select",
    "channels_select",
    "multi_static_select",
    "multi_external_select",
    "multi_users_select",
    "multi_conversations_select",
    "multi_channels_select",
)
_OTHER_ELEMENTS = (
    "datepicker",
    "timepicker",
    "datetimepicker",
    "email_text_input",
    "url_text_input",
    "number_input",
    "rich_text_input",
    "file_input",
    "workflow_button",
)
_LOOSE_BLOCKS = ("divider", "rich_text", "file", "video", "table", "context_actions")


def blocks_text_length(node: Any) -> int:
    """Every `text` string in the blocks, added up."""
    if isinstance(node, dict):
        return sum(
            len(value) if key == "text" and isinstance(value, str) else blocks_text_length(value)
            for key, value in node.items()
        )
    if isinstance(node, list):
        return sum(blocks_text_length(value) for value in node)
    return 0


def invalid_blocks(problems: list[Problem]) -> JSON:
    """chat.* answer for bad blocks: HTTP 200, ``errors`` plus ``response_metadata.messages``."""
    errors = [f"{message} [json-pointer:{pointer}]" for message, pointer in problems]
    return {
        "ok": False,
        "error": "invalid_blocks",
        "errors": errors,
        "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]},
    }


def invalid_arguments(problems: list[Problem]) -> JSON:
    """views.* answer for a bad view: ``invalid_arguments`` with ``response_metadata.messages``."""
    messages = [f"[ERROR] {message} [json-pointer:{pointer}]" for message, pointer in problems]
    return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": messages}}


def blocks_problems(blocks: Any, *, pointer: str, max_blocks: int) -> list[Problem]:
    """Everything Slack would reject in a ``blocks`` array, with json-pointers into the request."""
    if not isinstance(blocks, list):
        return [("must be an array", pointer)]
    problems: list[Problem] = []
    if len(blocks) > max_blocks:
        problems.append((f"no more than {max_blocks} items allowed", pointer))
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        at = f"{pointer}/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(("must provide an object with a type", at))
            continue
        if "block_id" in block:
            block_id = block["block_id"]
            problems += _string_problems(block_id, f"{at}/block_id", 255)
            if isinstance(block_id, str) and block_id in seen_ids:
                problems.append((f"duplicate block_id: {block_id}", f"{at}/block_id"))
            seen_ids.add(str(block_id))
        checker = _BLOCK_CHECKS.get(block["type"])
        if checker is None and block["type"] not in _LOOSE_BLOCKS:
            problems.append(("failed to match all allowed schemas", at))
        elif checker is not None:
            problems += checker(block, at)
    return problems


def view_problems(view: Any, *, expected_type: str) -> list[Problem]:
    """What Slack would reject in a views.* ``view`` (pointers start at ``/view``)."""
    if not isinstance(view, dict):
        return [("must provide an object", "/view")]
    if view.get("type") != expected_type:
        return [(f"must be {expected_type}", "/view/type")]
    problems: list[Problem] = []
    if expected_type == "modal":
        if "title" not in view:
            problems.append(("missing required field: title", "/view"))
        for key in ("title", "submit", "close"):
            if key in view:
                problems += _text_problems(view[key], f"/view/{key}", 24, plain_only=True)
        blocks = view.get("blocks")
        has_input = isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") == "input" for b in blocks
        )
        if has_input and "submit" not in view:
            problems.append(("must provide submit when blocks contain an input", "/view/submit"))
    for key, limit in (("private_metadata", 3000), ("callback_id", 255), ("external_id", 255)):
        if key in view:
            problems += _string_problems(view[key], f"/view/{key}", limit, allow_empty=True)
    problems += blocks_problems(view.get("blocks"), pointer="/view/blocks", max_blocks=MAX_VIEW_BLOCKS)
    return problems


def _too_long(limit: int) -> str:
    return f"must be less than {limit + 1} characters"


def _string_problems(value: Any, at: str, limit: int, *, allow_empty: bool = False) -> list[Problem]:
    if not isinstance(value, str):
        return [("must be a string", at)]
    if not value and not allow_empty:
        return [("must be more than 0 characters", at)]
    return [(_too_long(limit), at)] if len(value) > limit else []


def _text_problems(obj: Any, at: str, limit: int, *, plain_only: bool = False) -> list[Problem]:
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in allowed:
        return [("failed to match all allowed schemas", at)]
    return _string_problems(obj.get("text"), f"{at}/text", limit)


def _array_problems(value: Any, at: str, *, most: int, least: int = 1) -> list[Problem]:
    if not isinstance(value, list):
        return [("must be an array", at)]
    if len(value) > most:
        return [(f"no more than {most} items allowed", at)]
    return [(f"must provide at least {least} items", at)] if len(value) < least else []


def _section(block: JSON, at: str) -> list[Problem]:
    problems: list[Problem] = []
    if "text" not in block and "fields" not in block:
        problems.append(("must provide either text or fields", at))
    if "text" in block:
        problems += _text_problems(block["text"], f"{at}/text", 3000)
    if "fields" in block:
        fields = block["fields"]
        problems += _array_problems(fields, f"{at}/fields", most=10)
        for i, item in enumerate(fields if isinstance(fields, list) else []):
            problems += _text_problems(item, f"{at}/fields/{i}", 2000)
    if "accessory" in block:
        problems += _element_problems(block["accessory"], f"{at}/accessory")
    return problems


def _header(block: JSON, at: str) -> list[Problem]:
    return _text_problems(block.get("text"), f"{at}/text", 150, plain_only=True)


def _context(block: JSON, at: str) -> list[Problem]:
    elements = block.get("elements")
    problems = _array_problems(elements, f"{at}/elements", most=10)
    for i, element in enumerate(elements if isinstance(elements, list) else []):
        if isinstance(element, dict) and element.get("type") == "image":
            problems += _string_problems(element.get("alt_text"), f"{at}/elements/{i}/alt_text", 2000)
        else:
            problems += _text_problems(element, f"{at}/elements/{i}", 3000)
    return problems


def _actions(block: JSON, at: str) -> list[Problem]:
    elements = block.get("elements")
    problems = _array_problems(elements, f"{at}/elements", most=25)
    action_ids: set[str] = set()
    for i, element in enumerate(elements if isinstance(elements, list) else []):
        problems += _element_problems(element, f"{at}/elements/{i}")
        action_id = element.get("action_id") if isinstance(element, dict) else None
        # Slack wants action_ids unique within their block; the block_id tells blocks apart.
        if isinstance(action_id, str) and action_id in action_ids:
            problems.append((f"duplicate action_id: {action_id}", f"{at}/elements/{i}/action_id"))
        if isinstance(action_id, str):
            action_ids.add(action_id)
    return problems


def _input(block: JSON, at: str) -> list[Problem]:
    problems = _text_problems(block.get("label"), f"{at}/label", 2000, plain_only=True)
    if "hint" in block:
        problems += _text_problems(block["hint"], f"{at}/hint", 2000, plain_only=True)
    if "element" not in block:
        return [*problems, ("missing required field: element", at)]
    return problems + _element_problems(block["element"], f"{at}/element")


def _image_block(block: JSON, at: str) -> list[Problem]:
    problems = _string_problems(block.get("alt_text"), f"{at}/alt_text", 2000)
    if "image_url" in block:
        problems += _string_problems(block["image_url"], f"{at}/image_url", 3000)
    if "title" in block:
        problems += _text_problems(block["title"], f"{at}/title", 2000, plain_only=True)
    return problems


def _markdown(block: JSON, at: str) -> list[Problem]:
    return _string_problems(block.get("text"), f"{at}/text", 12000)


_BLOCK_CHECKS: dict[str, Callable[[JSON, str], list[Problem]]] = {
    "section": _section,
    "header": _header,
    "context": _context,
    "actions": _actions,
    "input": _input,
    "image": _image_block,
    "markdown": _markdown,
}


def _element_problems(element: Any, at: str) -> list[Problem]:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return [("must provide an object with a type", at)]
    kind = element["type"]
    problems: list[Problem] = []
    if "action_id" in element:
        problems += _string_problems(element["action_id"], f"{at}/action_id", 255)
    if "placeholder" in element:
        problems += _text_problems(element["placeholder"], f"{at}/placeholder", 150, plain_only=True)
    if "confirm" in element:
        problems += _confirm_problems(element["confirm"], f"{at}/confirm")
    if kind == "button":
        problems += _text_problems(element.get("text"), f"{at}/text", 75, plain_only=True)
        if "value" in element:
            problems += _string_problems(element["value"], f"{at}/value", 2000)
        if "url" in element:
            problems += _string_problems(element["url"], f"{at}/url", 3000)
        if "style" in element and element["style"] not in _BUTTON_STYLES:
            problems.append(("must be one of primary, danger", f"{at}/style"))
    elif kind == "plain_text_input":
        for key, least in (("max_length", 1), ("min_length", 0)):
            value = element.get(key)
            if value is not None and (not isinstance(value, int) or not least <= value <= 3000):
                problems.append((f"must be between {least} and 3000", f"{at}/{key}"))
    elif kind in _SELECTS or kind in ("checkboxes", "radio_buttons", "overflow"):
        most = {"checkboxes": 10, "radio_buttons": 10, "overflow": 5}.get(kind, 100)
        least = 2 if kind == "overflow" else 1
        if "options" in element:
            options = element["options"]
            problems += _array_problems(options, f"{at}/options", most=most, least=least)
            for i, option in enumerate(options if isinstance(options, list) else []):
                problems += _option_problems(option, f"{at}/options/{i}")
    elif kind == "image":
        problems += _string_problems(element.get("alt_text"), f"{at}/alt_text", 2000)
    elif kind not in _OTHER_ELEMENTS:
        problems.append(("failed to match all allowed schemas", at))
    return problems


def _option_problems(option: Any, at: str) -> list[Problem]:
    if not isinstance(option, dict):
        return [("must provide an object", at)]
    problems = _text_problems(option.get("text"), f"{at}/text", 75)
    if "value" in option:
        problems += _string_problems(option["value"], f"{at}/value", 150)
    return problems


def _confirm_problems(confirm: Any, at: str) -> list[Problem]:
    if not isinstance(confirm, dict):
        return [("must provide an object", at)]
    problems: list[Problem] = []
    for key, limit, plain in (
        ("title", 100, True),
        ("text", 300, False),
        ("confirm", 30, True),
        ("deny", 30, True),
    ):
        if key in confirm:
            problems += _text_problems(confirm[key], f"{at}/{key}", limit, plain_only=plain)
    return problems
