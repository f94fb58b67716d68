"""Amounts written in a draft, checked against the draft's amount field and the category's limit."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from bot.risk.findings import Finding, RiskRules
from bot.risk.money import MONEY_TERMS
from bot.risk.text import RiskText, folded_form, quoted, word_form

_NUMBER = r"\d{1,3}(?:[,.']\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_SYMBOL = r"US\$|CA\$|C\$|AU\$|A\$|NZ\$|\$|€|£|¥"
_CODE = r"USD|EUR|GBP|CAD|AUD|NZD|CHF|JPY|SEK|NOK|DKK|PLN|MXN|BRL|INR"
_AMOUNT = re.compile(
    rf"(?P<s1>{_SYMBOL})\s?(?P<n1>{_NUMBER})(?![\d.,]\d)"
    rf"|(?<![\w.,])(?P<n2>{_NUMBER})\s?(?P<s2>{_SYMBOL})(?!\s?\d)"
    rf"|\b(?P<c1>{_CODE})\s?(?P<n3>{_NUMBER})(?![\d.,]\d)"
    rf"|(?<![\w.,])(?P<n4>{_NUMBER})\s?(?P<c2>{_CODE})\b"
    rf"|(?<![\w.,])(?P<n5>{_NUMBER})\s(?P<w>dollars?|bucks|euros?|pounds?)\b",
    re.IGNORECASE,
)
_SYMBOL_CURRENCY = {
    "US$": "USD",
    "CA$": "CAD",
    "C$": "CAD",
    "AU$": "AUD",
    "A$": "AUD",
    "NZ$": "NZD",
    "$": "$",
    "€": "EUR",
    "£": "GBP",
    "¥": "JPY",
}
_WORD_CURRENCY = {"dollar": "$", "dollars": "$", "bucks": "$", "euro": "EUR", "euros": "EUR"}
_WORD_CURRENCY |= {"pound": "GBP", "pounds": "GBP"}
_DOLLARS = frozenset({"USD", "CAD", "AUD", "NZD", "MXN", "SGD", "HKD"})
_MAX_AMOUNTS = 200
_CLAUSE_BREAK = re.compile(r"[;:!?\n()]|[.,](?!\d)")


@dataclass(frozen=True)
class _Amount:
    value: Decimal
    currency: str  # an ISO code, or "$" for a dollar of unknown country
    text: str
    bound: bool  # sits next to a money word ("refund of $45"), so it is what the draft promises


def _parse_number(raw: str) -> Decimal | None:
    raw = raw.replace("'", "")
    last_comma, last_dot = raw.rfind(","), raw.rfind(".")
    decimal_at = max(last_comma, last_dot)
    if decimal_at != -1 and len(raw) - decimal_at - 1 not in (1, 2):
        decimal_at = -1  # "1,200" or "1.200": a thousands separator
    whole = raw[:decimal_at] if decimal_at != -1 else raw
    fraction = raw[decimal_at + 1 :] if decimal_at != -1 else ""
    digits = re.sub(r"[^\d]", "", whole)
    try:
        return Decimal(f"{digits}.{fraction}" if fraction else digits)
    except InvalidOperation:
        return None


def _amounts(text: RiskText) -> Iterator[_Amount]:
    visible = text.visible
    # A real draft names a handful of amounts; the cap keeps a pathological one cheap.
    for m in itertools.islice(_AMOUNT.finditer(visible), _MAX_AMOUNTS):
        groups = m.groupdict()
        number = groups["n1"] or groups["n2"] or groups["n3"] or groups["n4"] or groups["n5"] or ""
        value = _parse_number(number)
        if value is None:
            continue
        if groups["s1"] or groups["s2"]:
            currency = _SYMBOL_CURRENCY[(groups["s1"] or groups["s2"] or "").upper()]
        elif groups["c1"] or groups["c2"]:
            currency = (groups["c1"] or groups["c2"] or "").upper()
        else:
            currency = _WORD_CURRENCY[(groups["w"] or "").lower()]
        before = _CLAUSE_BREAK.split(visible[max(0, m.start() - 80) : m.start()])[-1]
        after = _CLAUSE_BREAK.split(visible[m.end() : m.end() + 60])[0]
        window = " ".join(
            word_form(folded_form(before)).split()[-5:] + word_form(folded_form(after)).split()[:3]
        )
        yield _Amount(value, currency, m.group(), MONEY_TERMS.search(window) is not None)


def _same_currency(text_currency: str, field_currency: str) -> bool:
    if text_currency == "$":
        return field_currency in _DOLLARS
    return text_currency == field_currency


def check_amounts(
    rules: RiskRules, draft: RiskText, amount: Decimal | None, currency: str | None
) -> list[Finding]:
    findings: list[Finding] = []
    field_currency = (currency or rules.currency).upper()
    if amount is not None and currency is not None and currency.upper() != rules.currency.upper():
        findings.append(
            Finding(
                "currency_mismatch",
                "medium",
                f"The amount is in {currency.upper()} but this category counts {rules.currency.upper()}.",
            )
        )
    if amount is not None and rules.max_amount is not None and amount > rules.max_amount:
        findings.append(
            Finding(
                "amount_over_limit",
                "high",
                f"The amount {amount} {field_currency} is above this category's limit of "
                f"{rules.max_amount} {rules.currency.upper()}.",
            )
        )
    if not rules.money and amount is None:
        return findings  # prices in a plain reply are not promises; the money rule covers those
    promised = [a for a in _amounts(draft) if a.bound]
    if amount is None:
        if promised:
            findings.append(
                Finding(
                    "amount_mismatch",
                    "high",
                    f"The draft promises {quoted(promised[0].text)} but the draft has no amount, "
                    "so caps would not count it.",
                )
            )
        return findings
    wrong = [a for a in promised if a.value != amount or not _same_currency(a.currency, field_currency)]
    if wrong:
        findings.append(
            Finding(
                "amount_mismatch",
                "high",
                f"The draft text says {quoted(wrong[0].text)} but the amount is {amount} {field_currency}.",
            )
        )
    return findings
