"""The Claude second opinion as an outbox job: review a posted draft, then update its card.

It never blocks intake or a decision: the card is posted at once with "AI review pending",
and a failed or unavailable review only says so. A high-severity AI finding on a pending,
not yet half-approved draft raises it to two approvers, like a high rule finding.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bot import audit, policy
from bot.metrics import Metrics
from bot.reviewer import ClaudeReviewer, ReviewResult
from bot.risk import Finding, risk_level
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Draft, OutboxJob


class AIReviewJobs:
    def __init__(self, rt: Runtime, reviewer: ClaudeReviewer, metrics: Metrics | None = None) -> None:
        self.rt = rt
        self.reviewer = reviewer
        self.metrics = metrics

    def handlers(self) -> dict[str, Any]:
        return {"risk.ai_review": self.review}

    async def review(self, job: OutboxJob) -> None:
        draft_id = json.loads(job.payload)["draft_id"]

        def load() -> tuple[str, str | None, str, str] | None:
            with transaction(self.rt.engine, write=False) as session:
                draft = session.get(Draft, draft_id)
            if draft is None or draft.status != "pending":
                return None
            category = self.rt.config.categories.get(draft.category)
            return (category.policy if category else "", draft.context, draft.body, draft.category)

        loaded = await asyncio.to_thread(load)
        if loaded is None:
            return
        policy_text, context, body, category = loaded
        result = await self.reviewer.review(policy=policy_text, context=context, body=body, category=category)
        if self.metrics is not None:
            self.metrics.reviewer.labels(result.status).inc()
        await asyncio.to_thread(apply, self.rt, draft_id, result)


def apply(rt: Runtime, draft_id: str, result: ReviewResult) -> None:
    """Merge the reviewer's findings into the draft's risk, audited, and refresh its card."""
    now = rt.clock()
    with transaction(rt.engine, audited=True) as session:
        draft = session.get(Draft, draft_id)
        # A draft withdrawn or expired while the reviewer read it ended unreviewed: its card says
        # so, and its updated_at stays the time it ended.
        if draft is None or draft.status in ("cancelled", "expired"):
            return
        risk = json.loads(draft.risk)
        findings = [
            Finding(code=f["code"], severity=f["severity"], message=f["message"])
            for f in risk["findings"]
            if not f["code"].startswith("ai_")
        ]
        findings += result.findings
        risk.update(
            level=risk_level(findings),
            findings=[f.to_dict() for f in findings],
            ai={"status": result.status, "note": result.note},
        )
        values: dict[str, Any] = {"risk": json.dumps(risk), "updated_at": now}
        high = any(f.severity == "high" for f in result.findings)
        if high and draft.status == "pending" and draft.first_approver is None:
            values["approvals_needed"] = policy.approvals_needed(
                amount=None, two_person_above=None, high_risk=True
            )
        if not queries.update_draft(session, draft_id, where={"version": draft.version}, **values):
            return
        # Not a status change: audited and re-rendered, but no agent callback.
        audit.append(
            session,
            at=now,
            actor="system:ai-review",
            action="draft.ai_reviewed",
            subject=draft_id,
            before={"level": json.loads(draft.risk)["level"]},
            after={
                "level": risk["level"],
                "ai": result.status,
                "findings": [f.code for f in result.findings],
            },
        )
        queries.enqueue(session, "slack.render", {"draft_id": draft_id}, now=now)
    rt.wake_outbox()
