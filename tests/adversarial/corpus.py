"""Runs the rule checks over the adversarial corpus and prints the confusion matrix.

Usage, from the repository root: `python -m tests.adversarial.corpus`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot.risk import Finding, RiskRules, check_rules, risk_level

HERE = Path(__file__).parent
_DOMAINS = ("help.acme.com", "acme.com")
_PHRASES = ("we guarantee", "legal advice")
# The two categories of DESIGN.md's example config.
RULES = {
    "refund": RiskRules(
        money=True,
        max_amount=Decimal("300.00"),
        currency="USD",
        allowed_link_domains=_DOMAINS,
        forbidden_phrases=_PHRASES,
    ),
    "reply": RiskRules(
        money=False,
        max_amount=None,
        currency="USD",
        allowed_link_domains=_DOMAINS,
        forbidden_phrases=_PHRASES,
    ),
}


@dataclass(frozen=True)
class Case:
    file: str
    line: int
    category: str
    body: str
    context: str | None
    amount: Decimal | None
    currency: str | None
    why: str


@dataclass(frozen=True)
class Outcome:
    case: Case
    level: str
    findings: list[Finding]

    @property
    def flagged(self) -> bool:
        return self.level in ("medium", "high")


@dataclass(frozen=True)
class Matrix:
    bad: list[Outcome]
    good: list[Outcome]

    @property
    def misses(self) -> list[Outcome]:
        return [o for o in self.bad if not o.flagged]

    @property
    def false_positives(self) -> list[Outcome]:
        return [o for o in self.good if o.flagged]

    @property
    def recall(self) -> float:
        return (len(self.bad) - len(self.misses)) / len(self.bad)

    @property
    def false_positive_rate(self) -> float:
        return len(self.false_positives) / len(self.good)


def load(name: str) -> list[Case]:
    cases = []
    path = HERE / name
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row: dict[str, Any] = json.loads(line)
        cases.append(
            Case(
                file=name,
                line=number,
                category=row["category"],
                body=row["body"],
                context=row.get("context"),
                amount=Decimal(row["amount"]) if row.get("amount") is not None else None,
                currency=row.get("currency"),
                why=row["why"],
            )
        )
    return cases


def evaluate(case: Case) -> Outcome:
    findings = check_rules(
        rules=RULES[case.category],
        body=case.body,
        context=case.context,
        amount=case.amount,
        currency=case.currency,
    )
    return Outcome(case, risk_level(findings), findings)


def run() -> Matrix:
    return Matrix(
        bad=[evaluate(c) for c in load("bad.jsonl")],
        good=[evaluate(c) for c in load("good.jsonl")],
    )


def _describe(outcome: Outcome) -> str:
    case = outcome.case
    codes = ", ".join(f"{f.code}/{f.severity}" for f in outcome.findings) or "no findings"
    return f"  {case.file}:{case.line} [{case.category}] {case.why} -> {outcome.level} ({codes})"


def report(matrix: Matrix) -> str:
    bad_flagged = len(matrix.bad) - len(matrix.misses)
    good_flagged = len(matrix.false_positives)
    lines = [
        "Rule checks on the adversarial corpus (flagged = risk level medium or high)",
        "",
        f"{'':14}{'flagged':>9}{'clean':>9}{'total':>9}",
        f"{'bad drafts':14}{bad_flagged:>9}{len(matrix.misses):>9}{len(matrix.bad):>9}",
        f"{'good drafts':14}{good_flagged:>9}{len(matrix.good) - good_flagged:>9}{len(matrix.good):>9}",
        "",
        f"recall (bad flagged):           {matrix.recall:.1%}",
        f"false-positive rate (good flagged): {matrix.false_positive_rate:.1%}",
        "",
        f"missed bad drafts ({len(matrix.misses)}):",
        *[_describe(o) for o in matrix.misses],
        f"false positives ({good_flagged}):",
        *[_describe(o) for o in matrix.false_positives],
    ]
    return "\n".join(lines)


def main() -> int:
    print(report(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
