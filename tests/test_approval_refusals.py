"""The approval's own refusals, below the Slack layer: a reviewer's edited amount (the Edit modal
checks it before its ack, the transaction again, both with ``policy.edited_amount_problem``), and
a cap refusal whose card refresh fails."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa

from bot import agents, decisions, drafts, intake, policy
from bot.errors import CapRefused, DecisionRefused
from bot.runtime import Runtime
from bot.schemas import DraftIn
from storage import queries


def test_the_policy_allows_up_to_the_limit_and_no_limit_allows_anything() -> None:
    assert policy.edited_amount_problem(Decimal("300.00"), Decimal("300.00")) is None
    assert policy.edited_amount_problem(Decimal("9999999"), None) is None
    assert policy.edited_amount_problem(Decimal("300.01"), Decimal("300.00")) == (
        "The edited amount is above this category's limit of 300.00."
    )


def test_the_approval_refuses_an_edited_amount_above_the_limit_and_changes_nothing(rt: Runtime) -> None:
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    body = {"category": "refund", "summary": "s", "body": "Refund of $30.", "amount": "30.00"}
    _, created = intake.submit(rt, agent=agent, draft=DraftIn.model_validate(body), key=None, base_url="")

    def approve(amount: str) -> None:
        decisions.approve(
            rt,
            draft_id=str(created["id"]),
            version=1,
            user="U0ALICE",
            reviewers=frozenset({"U0ALICE"}),
            reviewer=policy.Reviewer("U0ALICE"),
            edited_body="Refund of $301.",
            edited_amount=Decimal(amount),
        )

    with pytest.raises(DecisionRefused, match=r"above this category's limit of 300\.00"):
        approve("300.01")
    view = drafts.get(rt, agent=agent, draft_id=str(created["id"]))
    assert view["status"] == "pending" and view["decisions"] == [] and view["amount"] == "30.00"
    approve("300.00")  # the limit itself is allowed; above 200.00 it takes a second approver
    view = drafts.get(rt, agent=agent, draft_id=str(created["id"]))
    assert view["status"] == "pending" and len(view["decisions"]) == 1


def test_a_cap_refusal_stands_when_its_card_refresh_cannot_be_queued(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    body = {"category": "refund", "summary": "s", "body": "Refund of $200.", "amount": "200.00"}
    ids = [
        str(
            intake.submit(rt, agent=agent, draft=DraftIn.model_validate(body), key=None, base_url="")[1]["id"]
        )
        for _ in range(3)
    ]

    def approve(draft_id: str) -> None:
        decisions.approve(
            rt,
            draft_id=draft_id,
            version=1,
            user="U0ALICE",
            reviewers=frozenset({"U0ALICE"}),
            reviewer=policy.Reviewer("U0ALICE"),
        )

    approve(ids[0])
    approve(ids[1])

    def broken(*args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("INSERT INTO outbox_job", None, Exception("disk I/O error"))

    monkeypatch.setattr(queries, "enqueue", broken)  # the only enqueue of a refused approval
    with pytest.raises(CapRefused, match=r"exceed today's cap \(2/20 today · 400\.00/500\.00 USD\)"):
        approve(ids[2])
