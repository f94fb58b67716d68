"""Typed, read-only views of the agent API's answers (amounts as Decimal, times as aware datetimes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, cast

Status = Literal[
    "pending",
    "manual",
    "approved",
    "rejected",
    "expired",
    "cancelled",
    "executed",
    "failed",
    "needs_reconciliation",
    "handled",
]
ManualReason = Literal["agent_paused", "category_manual", "over_cap", "agent_offline"]
RiskLevel = Literal["none", "low", "medium", "high"]
ExecutionStatus = Literal["none", "pending", "succeeded", "failed", "needs_reconciliation"]

#: States out of which a draft never moves again (`failed` can still be retried by a reviewer).
FINAL: frozenset[str] = frozenset(
    {"rejected", "expired", "cancelled", "executed", "failed", "needs_reconciliation", "handled"}
)


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Submission:
    """The answer to a submission: `status` is `pending`, or `manual` with a `reason`."""

    id: str
    status: Literal["pending", "manual"]
    reason: ManualReason | None
    url: str
    idempotency_key: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any], idempotency_key: str) -> Submission:
        return cls(
            id=str(data["id"]),
            status=cast(Literal["pending", "manual"], data["status"]),
            reason=cast(ManualReason | None, data.get("reason")),
            url=str(data.get("url", "")),
            idempotency_key=idempotency_key,
        )


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Literal["low", "medium", "high"]
    message: str


@dataclass(frozen=True)
class Risk:
    level: RiskLevel
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Decision:
    action: Literal["approve", "edit", "reject"]
    by: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class Execution:
    status: ExecutionStatus
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class Draft:
    """A draft as its agent may see it."""

    id: str
    status: Status
    reason: str | None
    category: str
    summary: str
    body: str
    context: str | None
    approved_body: str | None
    edited: bool
    amount: Decimal | None
    currency: str | None
    risk: Risk
    decisions: tuple[Decision, ...]
    execution: Execution
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Draft:
        risk = data.get("risk") or {"level": "none", "findings": []}
        execution = data.get("execution") or {"status": "none", "attempts": 0, "last_error": None}
        return cls(
            id=str(data["id"]),
            status=cast(Status, data["status"]),
            reason=_str(data.get("reason")),
            category=str(data["category"]),
            summary=str(data["summary"]),
            body=str(data["body"]),
            context=_str(data.get("context")),
            approved_body=_str(data.get("approved_body")),
            edited=bool(data.get("edited", False)),
            amount=_decimal(data.get("amount")),
            currency=_str(data.get("currency")),
            risk=Risk(
                level=cast(RiskLevel, risk["level"]),
                findings=tuple(
                    Finding(code=str(f["code"]), severity=f["severity"], message=str(f["message"]))
                    for f in risk.get("findings", [])
                ),
            ),
            decisions=tuple(
                Decision(
                    action=d["action"],
                    by=str(d["by"]),
                    reason=_str(d.get("reason")),
                    at=datetime.fromisoformat(str(d["at"])),
                )
                for d in data.get("decisions", [])
            ),
            execution=Execution(
                status=cast(ExecutionStatus, execution["status"]),
                attempts=int(execution.get("attempts", 0)),
                last_error=_str(execution.get("last_error")),
            ),
            created_at=datetime.fromisoformat(str(data["created_at"])),
            updated_at=datetime.fromisoformat(str(data["updated_at"])),
        )

    @property
    def final_body(self) -> str:
        """The text to act on: the reviewer's edit when there is one, else the agent's own."""
        return self.approved_body if self.approved_body is not None else self.body

    @property
    def decided(self) -> bool:
        """True once the draft left `pending` (a `manual` draft is decided: humans have it)."""
        return self.status != "pending"

    @property
    def rejection(self) -> Decision | None:
        return next((d for d in reversed(self.decisions) if d.action == "reject"), None)

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.by for d in self.decisions if d.action in ("approve", "edit")))


@dataclass(frozen=True)
class CategoryUsage:
    mode: Literal["review", "manual"]
    count_cap: int | None
    count_used: int
    amount_cap: Decimal | None
    amount_used: Decimal
    currency: str


@dataclass(frozen=True)
class AgentStatus:
    """`GET /v1/agents/me`: the agent's state and today's usage per allowed category."""

    name: str
    state: Literal["active", "paused", "offline"]
    reason: str | None
    categories: Mapping[str, CategoryUsage]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentStatus:
        return cls(
            name=str(data["name"]),
            state=data["state"],
            reason=_str(data.get("reason")),
            categories={
                name: CategoryUsage(
                    mode=c["mode"],
                    count_cap=c.get("count_cap"),
                    count_used=int(c.get("count_used", 0)),
                    amount_cap=_decimal(c.get("amount_cap")),
                    amount_used=Decimal(str(c.get("amount_used", "0"))),
                    currency=str(c.get("currency", "")),
                )
                for name, c in (data.get("categories") or {}).items()
            },
        )
