"""Rule checks on an agent's draft: pure functions that turn a draft and its context into findings.

No I/O and no state; the Claude second opinion lives in bot/reviewer.py.
"""

from __future__ import annotations

from decimal import Decimal

from bot.risk.amounts import check_amounts
from bot.risk.contacts import check_cards, check_contacts, check_ibans
from bot.risk.content import check_display_controls, check_phrases, check_secrets, check_size
from bot.risk.findings import Finding, Level, RiskRules, Severity, risk_level
from bot.risk.injection import check_injection
from bot.risk.language import check_language
from bot.risk.links import check_links, check_mentions
from bot.risk.money import check_money
from bot.risk.text import RiskText

__all__ = ["Finding", "Level", "RiskRules", "Severity", "check_rules", "risk_level"]


def check_rules(
    *, rules: RiskRules, body: str, context: str | None, amount: Decimal | None, currency: str | None
) -> list[Finding]:
    """Run every rule on one draft; findings come out in a stable order, one per problem."""
    draft = RiskText.of(body)
    # A blank context is no context: nothing in it shows what the customer asked.
    ctx = RiskText.of(context) if context is not None and context.strip() else None
    findings: list[Finding] = []
    findings += check_size(rules, draft)
    findings += check_display_controls(body, context)
    findings += check_money(rules, draft, ctx, amount)
    findings += check_amounts(rules, draft, amount, currency)
    findings += check_cards(draft)
    findings += check_ibans(draft, ctx)
    findings += check_contacts(rules, draft, ctx)
    findings += check_links(rules, draft)
    findings += check_mentions(draft)
    findings += check_secrets(draft)
    findings += check_phrases(rules, draft)
    findings += check_injection(draft, ctx)
    findings += check_language(draft, ctx)
    return findings
