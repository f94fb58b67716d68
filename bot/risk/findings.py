"""What the rules read and what they report: RiskRules in, Findings out, and the level they add up to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Severity = Literal["low", "medium", "high"]
Level = Literal["none", "low", "medium", "high"]

_RANK: dict[str, int] = {"none": 0, "low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True)
class Finding:
    """One thing a reviewer should look at: a stable code, a severity and one plain line."""

    code: str
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, str]:
        """The JSON shape used on the agent API and by `countersign risk check`."""
        return {"code": self.code, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class RiskRules:
    """The per-category settings the rules read (built from the config file)."""

    money: bool
    max_amount: Decimal | None
    currency: str
    allowed_link_domains: tuple[str, ...]
    forbidden_phrases: tuple[str, ...]
    max_body_chars: int = 4000


def risk_level(findings: Sequence[Finding]) -> Level:
    """The highest severity among the findings, or "none"."""
    level: Level = "none"
    for finding in findings:
        if _RANK[finding.severity] > _RANK[level]:
            level = finding.severity
    return level
