"""Reviewing from Slack: resolve who clicked, then run the decision in the database.

The Slack lookups (users.info, user groups) happen here, before the transaction, so the
transaction itself is short; if Slack cannot say who the user is, nothing is decided.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import ParamSpec, TypeVar

from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import SQLAlchemyError

from bot import decisions, manual, policy
from bot.decisions import Outcome
from bot.decisions.outcomes import control_refusal
from bot.errors import DecisionRefused
from bot.metrics import Metrics
from bot.runtime import Runtime
from bot.settings import Category, currency_exponent
from bot.slack import Directory
from storage.db import transaction
from storage.tables import Draft

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

VALUE_RE = re.compile(r"(d_[a-z2-7]{1,40}):([0-9]{1,6})")


@dataclass(frozen=True)
class EditForm:
    draft_id: str
    version: int
    body: str
    amount_text: str | None
    category: str | None = None  # from the modal's metadata; None: read from the draft


def parse_value(value: str) -> tuple[str, int]:
    """A button's value, `draft_id:version`; anything else is refused."""
    match = VALUE_RE.fullmatch(value or "")
    if match is None:
        raise DecisionRefused("This button is not one of Countersign's.")
    return match.group(1), int(match.group(2))


def parse_amount(text: str, currency: str) -> Decimal:
    try:
        return policy.parse_api_amount(text.strip(), currency_exponent(currency))
    except ValueError as exc:
        raise DecisionRefused(f"Amount: {exc}") from None


def fail_closed(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A database that cannot be read decides nothing; the reviewer is told so."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except SQLAlchemyError:
            log.exception("control state unreadable")
            raise DecisionRefused(
                "Countersign cannot read its control state right now: this was not approved or executed"
                " unless the draft's message comes to say so (a commit whose answer was lost). Clicking"
                " again is safe: a draft is never approved twice."
            ) from None

    return wrapper


@dataclass
class Reviewing:
    rt: Runtime
    directory: Directory
    metrics: Metrics | None = None

    def _counted(self, outcome: Outcome, action: str, draft: Draft) -> Outcome:
        if self.metrics is not None and outcome.final:
            self.metrics.decisions.labels(action, draft.category).inc()
            waited = (self.rt.clock() - draft.created_at).total_seconds()
            self.metrics.time_to_decision.labels(draft.category).observe(waited)
        return outcome

    def _category(self, draft_id: str) -> tuple[Draft, Category]:
        with transaction(self.rt.engine, write=False) as session:
            draft = session.get(Draft, draft_id)
        if draft is None:
            raise DecisionRefused("This draft no longer exists.")
        category = self.rt.config.categories.get(draft.category)
        if category is None:
            raise DecisionRefused(f"Category {draft.category!r} is no longer configured.")
        return draft, category

    async def who(self, user: str, category: Category) -> tuple[frozenset[str], policy.Reviewer]:
        """The category's reviewers and what Slack says about `user`; fail closed on Slack errors."""
        try:
            reviewers = await self.directory.reviewers(category)
            reviewer = await self.directory.reviewer(user)
        except SlackApiError as exc:
            error = exc.response.get("error") if hasattr(exc.response, "get") else "unknown"
            raise DecisionRefused(
                f"Slack could not confirm who you are ({error}); nothing was decided."
            ) from None
        return reviewers, reviewer

    @fail_closed
    async def draft_for_edit(self, *, user: str, value: str) -> tuple[Draft, Category]:
        """draft_for_review, and the draft fits in the Edit modal whole."""
        draft, category = await self.draft_for_review(user=user, value=value)
        too_long = policy.too_long_to_edit(draft.body)
        if too_long:
            raise DecisionRefused(too_long)
        # Submitting the modal approves: refuse now what the approval would refuse after the
        # reviewer's work (the approval checks all of it again in its transaction).
        refusal = policy.refusal_to_approve(
            user, requested_by=draft.requested_by, first_approver=draft.first_approver
        )
        blocked = refusal or await asyncio.to_thread(self._blocked, draft)
        if blocked:
            raise DecisionRefused(blocked)
        return draft, category

    def _blocked(self, draft: Draft) -> str | None:
        with transaction(self.rt.engine, write=False) as session:
            return control_refusal(session, draft, self.rt.clock())

    @fail_closed
    async def draft_for_review(self, *, user: str, value: str) -> tuple[Draft, Category]:
        """The pending draft behind a button, after checking that `user` may review it."""
        draft_id, version = parse_value(value)
        draft, category = await asyncio.to_thread(self._category, draft_id)
        reviewers, reviewer = await self.who(user, category)
        refusal = policy.refusal_to_decide(reviewer, reviewers=reviewers, requested_by=None)
        if refusal:
            raise DecisionRefused(refusal)
        if draft.version != version:
            raise DecisionRefused(
                f"This draft changed since that message was shown; review version {draft.version}."
            )
        if draft.status != "pending":
            raise DecisionRefused(f"Already {draft.status.replace('_', ' ')}.")
        return draft, category

    @fail_closed
    async def approve(self, *, user: str, value: str) -> Outcome:
        draft_id, version = parse_value(value)
        draft, category = await asyncio.to_thread(self._category, draft_id)
        reviewers, reviewer = await self.who(user, category)
        outcome = await asyncio.to_thread(
            decisions.approve,
            self.rt,
            draft_id=draft_id,
            version=version,
            user=user,
            reviewers=reviewers,
            reviewer=reviewer,
        )
        return self._counted(outcome, "approve", draft)

    @fail_closed
    async def edited_amount_problem(self, form: EditForm) -> str | None:
        """Why the Edit modal's amount cannot be approved, for the modal to show on its field before
        it closes; the approval checks it again in its transaction."""
        if form.amount_text is None:
            return None
        known = self.rt.config.categories.get(form.category or "")
        # A modal opened before its metadata named the category: the draft says.
        category = known or (await asyncio.to_thread(self._category, form.draft_id))[1]
        try:
            amount = parse_amount(form.amount_text, category.currency)
        except DecisionRefused as refused:
            return refused.message
        return policy.edited_amount_problem(amount, category.max_amount)

    @fail_closed
    async def approve_edited(self, *, user: str, form: EditForm) -> Outcome:
        draft, category = await asyncio.to_thread(self._category, form.draft_id)
        amount = None if form.amount_text is None else parse_amount(form.amount_text, category.currency)
        reviewers, reviewer = await self.who(user, category)
        outcome = await asyncio.to_thread(
            decisions.approve,
            self.rt,
            draft_id=form.draft_id,
            version=form.version,
            user=user,
            reviewers=reviewers,
            reviewer=reviewer,
            edited_body=form.body,
            edited_amount=amount,
        )
        return self._counted(outcome, "edit" if outcome.edited else "approve", draft)

    @fail_closed
    async def reject(self, *, user: str, draft_id: str, version: int, reason: str) -> Outcome:
        draft, category = await asyncio.to_thread(self._category, draft_id)
        reviewers, reviewer = await self.who(user, category)
        outcome = await asyncio.to_thread(
            decisions.reject,
            self.rt,
            draft_id=draft_id,
            version=version,
            user=user,
            reviewers=reviewers,
            reviewer=reviewer,
            reason=reason,
        )
        return self._counted(outcome, "reject", draft)

    @fail_closed
    async def retry(self, *, user: str, value: str) -> Outcome:
        draft_id, version = parse_value(value)
        _, category = await asyncio.to_thread(self._category, draft_id)
        reviewers, reviewer = await self.who(user, category)
        return await asyncio.to_thread(
            decisions.retry,
            self.rt,
            draft_id=draft_id,
            version=version,
            user=user,
            reviewers=reviewers,
            reviewer=reviewer,
        )

    @fail_closed
    async def manual(self, *, user: str, value: str, action: str) -> Outcome:
        """Claim or close a manual-queue item."""
        draft_id, _ = parse_value(value)
        _, category = await asyncio.to_thread(self._category, draft_id)
        reviewers, reviewer = await self.who(user, category)
        refusal = policy.refusal_to_decide(reviewer, reviewers=reviewers, requested_by=None)
        if refusal:
            raise DecisionRefused(refusal)
        return await asyncio.to_thread(manual.act, self.rt, draft_id=draft_id, user=user, action=action)
