"""Pure rules: money arithmetic, the cap day, where a new draft goes, who may decide.

No I/O here: every function takes plain values and returns plain values, so the rules are
tested without a database or Slack.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

TERMINAL = frozenset(
    {"rejected", "expired", "cancelled", "executed", "failed", "needs_reconciliation", "handled"}
)
DECIDED = frozenset({"approved", "rejected", "executed", "failed", "needs_reconciliation"})

AMOUNT_RE = re.compile(r"(0|[1-9][0-9]{0,14})(\.[0-9]{1,4})?")
# Slack's plain_text_input holds at most 3,000 characters: a longer draft cannot be shown whole in
# the Edit modal, so it cannot be edited there (only approved or rejected as it is).
EDITABLE_CHARS = 3000


def too_long_to_edit(body: str) -> str | None:
    """Why a draft cannot be edited in Slack, or None when it can."""
    if len(body) <= EDITABLE_CHARS:
        return None
    return (
        f"This draft is {len(body):,} characters, more than Slack's edit box holds ({EDITABLE_CHARS:,}):"
        " approve or reject it as it is (a rejection's reason goes back to the agent)."
    )


def edited_amount_problem(amount: Decimal, max_amount: Decimal | None) -> str | None:
    """Why a reviewer's edited amount cannot be approved, or None when it can."""
    if max_amount is not None and amount > max_amount:
        return f"The edited amount is above this category's limit of {max_amount}."
    return None


def to_minor(amount: Decimal, exponent: int) -> int:
    """Decimal → integer minor units; the caller has already checked the number of decimals."""
    return int(amount.scaleb(exponent))


def from_minor(minor: int, exponent: int) -> Decimal:
    return Decimal(minor).scaleb(-exponent).quantize(Decimal(1).scaleb(-exponent))


def format_money(minor: int, currency: str, exponent: int) -> str:
    return f"{from_minor(minor, exponent)} {currency}"


def parse_api_amount(text: str, exponent: int) -> Decimal:
    """A draft's amount as the API accepts it: a plain positive decimal string, no exponent."""
    if not AMOUNT_RE.fullmatch(text):
        raise ValueError('amount must be a decimal string like "30.00"')
    value = Decimal(text)
    if value <= 0:
        raise ValueError("amount must be greater than zero")
    if -value.as_tuple().exponent > exponent:  # type: ignore[operator]
        raise ValueError(f"amount has more than {exponent} decimal places for its currency")
    return value


def cap_day(now: datetime, zone: ZoneInfo) -> str:
    """The configured zone's calendar day of an aware instant: the key every replica agrees on."""
    return now.astimezone(zone).date().isoformat()


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC start and end of a local calendar day; 23 or 25 hours long across DST changes."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    # In UTC, so that subtracting them gives the real length (aware datetimes sharing a zone
    # subtract as wall-clock times).
    return start.astimezone(UTC), end.astimezone(UTC)


@dataclass(frozen=True)
class CapCheck:
    count_cap: int | None
    amount_cap_minor: int | None
    count_used: int
    amount_used_minor: int

    def fits(self, amount_minor: int) -> bool:
        if self.count_cap is not None and self.count_used + 1 > self.count_cap:
            return False
        return self.amount_cap_minor is None or self.amount_used_minor + amount_minor <= self.amount_cap_minor


@dataclass(frozen=True)
class ControlView:
    """What decides where a new draft goes, as read in the submitting transaction."""

    agent_paused: bool
    all_paused: bool
    agent_offline: bool
    category_manual: bool
    caps: CapCheck
    agent_caps: CapCheck = CapCheck(None, None, 0, 0)  # the agent's own [agents.NAME] caps


SET_BY_CONFIG = "config"  # who set a mode switch that the config file's `mode = "manual"` asks for


def is_manual(mode: Mapping[str, Any] | None, now: datetime) -> bool:
    """Whether a category's stored mode switch is in force (a time-boxed one lapses by itself)."""
    if not mode:
        return False
    until = mode.get("until")
    return until is None or datetime.fromisoformat(until) > now


def route_new_draft(view: ControlView, amount_minor: int) -> str | None:
    """None when the draft goes to review; otherwise the `manual` reason, most urgent first."""
    if view.agent_paused or view.all_paused:
        return "agent_paused"
    if view.category_manual:
        return "category_manual"
    if view.agent_offline:
        return "agent_offline"
    if not (view.caps.fits(amount_minor) and view.agent_caps.fits(amount_minor)):
        return "over_cap"
    return None


def approvals_needed(*, amount: Decimal | None, two_person_above: Decimal | None, high_risk: bool) -> int:
    """Two distinct approvers above the threshold or for a high-severity finding."""
    if high_risk:
        return 2
    if amount is not None and two_person_above is not None and amount > two_person_above:
        return 2
    return 1


@dataclass(frozen=True)
class Reviewer:
    """What Slack told us about a clicking user (users.info)."""

    user_id: str
    deleted: bool = False
    is_bot: bool = False
    is_guest: bool = False


REQUESTER_REFUSED = "You requested this action, so someone else has to approve it."
FIRST_APPROVER_AGAIN = "You gave the first approval; a second, different reviewer has to approve."


def refusal_to_approve(user: str, *, requested_by: str | None, first_approver: str | None) -> str | None:
    """Why a reviewer may not approve this draft (beyond refusal_to_decide), or None."""
    if requested_by is not None and user == requested_by:
        return REQUESTER_REFUSED
    if first_approver is not None and user == first_approver:
        return FIRST_APPROVER_AGAIN
    return None


def refusal_to_decide(
    reviewer: Reviewer, *, reviewers: frozenset[str], requested_by: str | None
) -> str | None:
    """Why this user may not decide on this draft, or None when they may."""
    if reviewer.deleted or reviewer.is_bot or reviewer.is_guest:
        return "Deactivated, guest and bot accounts cannot review drafts."
    if reviewer.user_id not in reviewers:
        return "You are not a reviewer for this category."
    if requested_by is not None and reviewer.user_id == requested_by:
        return REQUESTER_REFUSED
    return None
