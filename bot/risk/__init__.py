"""Rule checks on an agent's draft: pure functions that turn a draft and its context into findings.

No I/O and no state; the Claude second opinion lives in bot/reviewer.py.
"""

from __future__ import annotations

from decimal import Decimal

from bot.risk.amounts import _check_amounts
from bot.risk.contacts import _check_cards, _check_contacts, _check_ibans
from bot.risk.content import _check_phrases, _check_secrets, _check_size
from bot.risk.findings import Finding, Level, RiskRules, Severity, risk_level
from bot.risk.injection import _check_injection
from bot.risk.language import _check_language
from bot.risk.links import _check_links, _check_mentions
from bot.risk.money import _check_money
from bot.risk.text import _Text

__all__ = ["Finding", "Level", "RiskRules", "Severity", "check_rules", "risk_level"]


def check_rules(
    *, rules: RiskRules, body: str, context: str | None, amount: Decimal | None, currency: str | None
) -> list[Finding]:
    """Run every rule on one draft; findings come out in a stable order, one per problem."""
    draft = _Text.of(body)
    # A blank context is no context: nothing in it shows what the customer asked.
    ctx = _Text.of(context) if context is not None and context.strip() else None
    findings: list[Finding] = []
    findings += _check_size(rules, draft)
    findings += _check_money(rules, draft, ctx, amount)
    findings += _check_amounts(rules, draft, amount, currency)
    findings += _check_cards(draft)
    findings += _check_ibans(draft, ctx)
    findings += _check_contacts(rules, draft, ctx)
    findings += _check_links(rules, draft)
    findings += _check_mentions(draft)
    findings += _check_secrets(draft)
    findings += _check_phrases(rules, draft)
    findings += _check_injection(draft, ctx)
    findings += _check_language(draft, ctx)
    return findings
