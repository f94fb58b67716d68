"""`countersign risk check`: the risk rules (and optionally Claude) over past tickets, offline.

With the reviewer, each checked line also says `"llm": "reviewed"`, or `"llm": "unavailable"` with
`llm_note` saying why (the API down, overloaded, timed out): those lines carry the rules' findings only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from bot import policy
from bot.intake import risk_rules
from bot.reviewer import ClaudeReviewer
from bot.risk import check_rules, risk_level
from bot.schemas import clean_text
from bot.settings import Settings, currency_exponent


def split_lines(text: str) -> list[str]:
    """The file's lines, split on "\\n" only: U+2028, \\x0c and the other breaks `str.splitlines`
    knows may stand unescaped inside a JSON string. A CRLF line loses its "\\r"."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no line of its own
    return [line.removesuffix("\r") for line in lines]


def check_lines(settings: Settings, lines: Sequence[str], *, llm: bool = False) -> list[dict[str, Any]]:
    """One result per input line: level and findings, or an error saying why it was skipped."""
    return asyncio.run(_check_all(settings, lines, llm=llm))


async def _check_all(settings: Settings, lines: Sequence[str], *, llm: bool) -> list[dict[str, Any]]:
    # One event loop for the whole file: the SDK's HTTP client belongs to the loop it started on.
    reviewer = ClaudeReviewer.from_settings(settings) if llm else None
    results = []
    try:
        for line in lines:
            try:
                results.append(await _check(settings, _parse(line), reviewer))
            except (ValueError, KeyError) as exc:
                results.append({"level": "none", "findings": [], "error": str(exc)})
    finally:
        if reviewer is not None:
            await reviewer.aclose()
    return results


def _parse(line: str) -> dict[str, Any]:
    try:
        item = json.loads(line)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(item, dict):
        raise ValueError("each line must be a JSON object")
    return item


def _text(item: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string field, as the agent API takes it; an optional one may be absent or null."""
    value = item.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    try:
        return clean_text(value)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}") from None


async def _check(settings: Settings, item: dict[str, Any], reviewer: ClaudeReviewer | None) -> dict[str, Any]:
    name = _text(item, "category", required=True)
    category = settings.config.categories.get(name or "")
    if category is None:
        raise ValueError(f"unknown category {name!r}")
    body = _text(item, "body", required=True) or ""
    context = _text(item, "context")
    currency = _text(item, "currency") or category.currency
    raw = item.get("amount")
    # Past tickets often hold amounts as JSON numbers; the rules judge them as the API's strings.
    is_number = isinstance(raw, int | float) and not isinstance(raw, bool)
    text = str(raw) if is_number else _text(item, "amount")
    amount: Decimal | None = None
    if text is not None:
        amount = policy.parse_api_amount(text, currency_exponent(currency))
    findings = check_rules(
        rules=risk_rules(category), body=body, context=context, amount=amount, currency=currency
    )
    if reviewer is None:
        return {"level": risk_level(findings), "findings": [f.to_dict() for f in findings]}
    review = await reviewer.review(policy=category.policy, context=context, body=body, category=category.name)
    findings = [*findings, *review.findings]
    result = {"level": risk_level(findings), "findings": [f.to_dict() for f in findings]}
    if review.status == "unavailable":
        return result | {"llm": "unavailable", "llm_note": review.note}
    return result | {"llm": "reviewed"}
