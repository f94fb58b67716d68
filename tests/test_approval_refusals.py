"""The approval's own refusals, below the Slack layer: a reviewer's edited amount (the Edit modal
checks it before its ack, the transaction again, both with ``policy.edited_amount_problem``), and
a cap refusal whose card refresh fails."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from bot import agents, decisions, drafts, intake, policy
from bot.errors import CapRefused, DecisionRefused
from bot.runtime import Runtime
from bot.schemas import DraftIn
from storage import queries
from storage.tables import Agent


def support_bot(rt: Runtime, category: str) -> Agent:
    agents.add(rt, name="support-bot", categories=[category], callback_prefixes=[])
    return agents.authenticate(rt, agents.rotate(rt, name="support-bot"))


def submit(rt: Runtime, agent: Agent, **fields: str) -> str:
    draft = DraftIn.model_validate({"summary": "s"} | fields)
    return str(intake.submit(rt, agent=agent, draft=draft, key=None, base_url="")[1]["id"])


def approve(rt: Runtime, draft_id: str, **edits: Any) -> None:
    decisions.approve(
        rt,
        draft_id=draft_id,
        version=1,
        user="U0ALICE",
        reviewers=frozenset({"U0ALICE"}),
        reviewer=policy.Reviewer("U0ALICE"),
        **edits,
    )


def test_the_policy_allows_up_to_the_limit_and_no_limit_allows_anything() -> None:
    assert policy.edited_amount_problem(Decimal("300.00"), Decimal("300.00")) is None
    assert policy.edited_amount_problem(Decimal("9999999"), None) is None
    assert policy.edited_amount_problem(Decimal("300.01"), Decimal("300.00")) == (
        "The edited amount is above this category's limit of 300.00."
    )


def test_the_approval_refuses_an_edited_amount_above_the_limit_and_changes_nothing(rt: Runtime) -> None:
    agent = support_bot(rt, "refund")
    draft_id = submit(rt, agent, category="refund", body="Refund of $30.", amount="30.00")

    def approve_edited(amount: str) -> None:
        approve(rt, draft_id, edited_body="Refund of $301.", edited_amount=Decimal(amount))

    with pytest.raises(DecisionRefused, match=r"above this category's limit of 300\.00"):
        approve_edited("300.01")
    view = drafts.get(rt, agent=agent, draft_id=draft_id)
    assert view["status"] == "pending" and view["decisions"] == [] and view["amount"] == "30.00"
    approve_edited("300.00")  # the limit itself is allowed; above 200.00 it takes a second approver
    view = drafts.get(rt, agent=agent, draft_id=draft_id)
    assert view["status"] == "pending" and len(view["decisions"]) == 1


def test_an_amount_cannot_be_edited_into_a_draft_without_one(rt: Runtime) -> None:
    agent = support_bot(rt, "reply")
    draft_id = submit(rt, agent, category="reply", body="Your order ships Monday.")
    with pytest.raises(DecisionRefused, match="no amount"):
        approve(rt, draft_id, edited_body="Your order ships Tuesday.", edited_amount=Decimal("5.00"))
    with rt.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT status, amount_minor FROM draft").one() == ("pending", None)


def test_a_cap_refusal_stands_when_its_card_refresh_cannot_be_queued(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = support_bot(rt, "refund")
    ids = [submit(rt, agent, category="refund", body="Refund of $200.", amount="200.00") for _ in range(3)]
    approve(rt, ids[0])
    approve(rt, ids[1])

    def broken(*args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("INSERT INTO outbox_job", None, Exception("disk I/O error"))

    monkeypatch.setattr(queries, "enqueue", broken)  # the only enqueue of a refused approval
    with pytest.raises(CapRefused, match=r"exceed today's cap \(2/20 today · 400\.00/500\.00 USD\)"):
        approve(rt, ids[2])
