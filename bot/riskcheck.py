"""`countersign risk check`: the risk rules (and optionally Claude) over past tickets, offline."""

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
from bot.settings import Settings, currency_exponent


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
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise ValueError("each line must be a JSON object")
                results.append(await _check(settings, item, reviewer))
            except (ValueError, KeyError) as exc:
                results.append({"level": "none", "findings": [], "error": str(exc)})
    finally:
        if reviewer is not None:
            await reviewer.aclose()
    return results


async def _check(settings: Settings, item: dict[str, Any], reviewer: ClaudeReviewer | None) -> dict[str, Any]:
    name = item.get("category")
    category = settings.config.categories.get(name) if isinstance(name, str) else None
    if category is None:
        raise ValueError(f"unknown category {name!r}")
    body = item.get("body")
    if not isinstance(body, str):
        raise ValueError("body must be a string")
    context = item.get("context") if isinstance(item.get("context"), str) else None
    currency = item.get("currency") or category.currency
    amount: Decimal | None = None
    if item.get("amount") is not None:
        amount = policy.parse_api_amount(str(item["amount"]), currency_exponent(currency))
    findings = check_rules(
        rules=risk_rules(category), body=body, context=context, amount=amount, currency=currency
    )
    if reviewer is not None:
        review = await reviewer.review(
            policy=category.policy, context=context, body=body, category=category.name
        )
        findings = [*findings, *review.findings]
    return {"level": risk_level(findings), "findings": [f.to_dict() for f in findings]}
