"""Checking a submission before any database work: the config, the agent's registration, the
amount and callback URL, and the risk rules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bot import audit, netguard, policy
from bot.errors import Forbidden, Invalid
from bot.risk import RiskRules, check_rules, risk_level
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.settings import Category, currency_exponent
from storage.tables import Agent


@dataclass(frozen=True)
class Prepared:
    """A submission that passed every check that needs no database."""

    agent_id: int
    agent_name: str
    draft: DraftIn
    category: Category
    amount: Decimal | None
    currency: str | None
    risk: dict[str, Any]
    key: str | None
    fingerprint: str
    base_url: str


def request_fingerprint(draft: DraftIn) -> str:
    """Hash of the request as parsed, so the same request spelled differently is still the same."""
    fields = draft.model_dump(exclude={"idempotency_key"}, exclude_none=True)
    return hashlib.sha256(audit.canonical(fields).encode()).hexdigest()


def risk_rules(category: Category) -> RiskRules:
    return RiskRules(
        money=category.money,
        max_amount=category.max_amount,
        currency=category.currency,
        allowed_link_domains=category.allowed_link_domains,
        forbidden_phrases=category.forbidden_phrases,
    )


def agent_categories(agent: Agent) -> list[str]:
    return [name for name in agent.categories.split(",") if name]


def prepare(rt: Runtime, *, agent: Agent, draft: DraftIn, key: str | None, base_url: str) -> Prepared:
    """Validate against the config and the agent's registration; run the risk rules."""
    category = rt.config.categories.get(draft.category)
    if category is None:
        raise Invalid(f"unknown category {draft.category!r}", field="category")
    if draft.category not in agent_categories(agent):
        raise Forbidden(
            f"agent {agent.name!r} may not submit to category {draft.category!r}", field="category"
        )
    amount: Decimal | None = None
    currency: str | None = None
    if draft.amount is not None:
        currency = draft.currency or category.currency
        if currency != category.currency:
            raise Invalid(f"category {category.name!r} works in {category.currency}", field="currency")
        try:
            amount = policy.parse_api_amount(draft.amount, currency_exponent(currency))
        except ValueError as exc:
            raise Invalid(str(exc), field="amount") from None
    elif draft.currency is not None:
        raise Invalid("currency given without an amount", field="currency")
    if draft.callback_url is not None:
        prefixes: list[str] = json.loads(agent.callback_prefixes)
        if not any(draft.callback_url.startswith(prefix) for prefix in prefixes):
            raise Invalid(
                "callback_url is not under a prefix registered for this agent", field="callback_url"
            )
        # The host comes from the prefix; one registered before the SSRF checks may still be refused.
        try:
            netguard.check_url(draft.callback_url)
        except ValueError as exc:
            raise Invalid(f"callback_url refused: {exc}", field="callback_url") from None
    findings = check_rules(
        rules=risk_rules(category), body=draft.body, context=draft.context, amount=amount, currency=currency
    )
    risk = {
        "level": risk_level(findings),
        "findings": [finding.to_dict() for finding in findings],
        "ai": {"status": "pending" if category.ai_review else "off", "note": ""},
    }
    return Prepared(
        agent_id=agent.id,  # type: ignore[arg-type]
        agent_name=agent.name,
        draft=draft,
        category=category,
        amount=amount,
        currency=currency,
        risk=risk,
        key=key,
        fingerprint=request_fingerprint(draft),
        base_url=base_url,
    )
