"""Daily caps per category: the effective limits (config or a human override) and today's usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from bot import policy
from bot.settings import Category, Config, currency_exponent
from storage import queries


def scope(category: str) -> str:
    return f"category:{category}"


@dataclass(frozen=True)
class Usage:
    category: str
    day: str
    currency: str
    exponent: int
    count_cap: int | None
    amount_cap_minor: int | None
    count_used: int
    amount_used_minor: int

    @property
    def check(self) -> policy.CapCheck:
        return policy.CapCheck(self.count_cap, self.amount_cap_minor, self.count_used, self.amount_used_minor)

    def _capped(self) -> list[tuple[int, int]]:
        """(used, cap) of each cap that is set: count, then amount."""
        pairs = ((self.count_used, self.count_cap), (self.amount_used_minor, self.amount_cap_minor))
        return [(used, cap) for used, cap in pairs if cap is not None]

    def peak(self) -> float:
        """The fuller of the caps as a fraction, for the 80%/100% alerts (0.0 with no cap; a zero
        cap is left out: nothing can be reserved against it to alert about)."""
        return max((used / cap for used, cap in self._capped() if cap), default=0.0)

    def fill(self) -> float | None:
        """The fuller of the caps as a fraction, for App Home's bar: `2/20 today · 450.00/500.00
        USD` is 0.9. None when no cap is set; a zero cap shows full (it leaves no room)."""
        return max((used / cap if cap > 0 else 1.0 for used, cap in self._capped()), default=None)

    def describe(self) -> str:
        """One line for Slack and refusals, e.g. `3/20 today · 90.00/500.00 USD`."""
        parts = [f"{self.count_used}/{self.count_cap if self.count_cap is not None else '∞'} today"]
        if self.amount_cap_minor is not None or self.amount_used_minor:
            used = policy.from_minor(self.amount_used_minor, self.exponent)
            cap = (
                "∞"
                if self.amount_cap_minor is None
                else policy.from_minor(self.amount_cap_minor, self.exponent)
            )
            parts.append(f"{used}/{cap} {self.currency}")
        return " · ".join(parts)


def limits(session: Session, category: Category, day: str) -> tuple[int | None, int | None]:
    """(count cap, amount cap in minor units) on `day`: `/agent cap` overrides config for the day it was set."""
    return limits_from(category, queries.get_control(session, f"cap:{category.name}"), day)


def limits_from(
    category: Category, override: dict[str, Any] | None, day: str
) -> tuple[int | None, int | None]:
    """The same, given the override switch already read."""
    exponent = currency_exponent(category.currency)
    count_cap = category.daily_count_cap
    amount_cap = (
        None if category.daily_amount_cap is None else policy.to_minor(category.daily_amount_cap, exponent)
    )
    if override and override.get("day") == day:
        count_cap = override.get("count_cap", count_cap)
        amount_cap = override.get("amount_cap_minor", amount_cap)
    return count_cap, amount_cap


def usage(session: Session, config: Config, category: Category, now: datetime) -> Usage:
    """Today's usage of one category in the configured zone."""
    day = policy.cap_day(now, config.timezone)
    count_cap, amount_cap = limits(session, category, day)
    count_used, amount_used = queries.cap_usage(session, scope(category.name), day)
    return Usage(
        category=category.name,
        day=day,
        currency=category.currency,
        exponent=currency_exponent(category.currency),
        count_cap=count_cap,
        amount_cap_minor=amount_cap,
        count_used=count_used,
        amount_used_minor=amount_used,
    )


def agent_scope(agent: str) -> str:
    return f"agent:{agent}"


def agent_usage(session: Session, config: Config, category: Category, agent: str, day: str) -> Usage:
    """Today's usage of an agent's own caps ([agents.NAME]), in `category`'s currency as `reserve`
    counts it."""
    tuning = config.agent_policy(agent)
    exponent = currency_exponent(category.currency)
    count_used, amount_used = queries.cap_usage(session, agent_scope(agent), day)
    return Usage(
        category=category.name,
        day=day,
        currency=category.currency,
        exponent=exponent,
        count_cap=tuning.daily_count_cap,
        amount_cap_minor=None
        if tuning.daily_amount_cap is None
        else policy.to_minor(tuning.daily_amount_cap, exponent),
        count_used=count_used,
        amount_used_minor=amount_used,
    )


def reserve(
    session: Session, config: Config, category: Category, *, agent: str, day: str, amount_minor: int
) -> str | None:
    """Reserve one action against the category's caps and the agent's own ([agents.NAME]).

    Returns None when it fits, else which cap refused it; the caller rolls the transaction
    back, so a reservation that fit one cap but not the other leaves nothing behind.
    """
    count_cap, amount_cap = limits(session, category, day)
    if (
        queries.reserve_cap(
            session,
            scope=scope(category.name),
            day=day,
            amount_minor=amount_minor,
            count_cap=count_cap,
            amount_cap_minor=amount_cap,
        )
        is None
    ):
        return "category"
    tuning = config.agent_policy(agent)
    if tuning.daily_count_cap is None and tuning.daily_amount_cap is None:
        return None
    exponent = currency_exponent(category.currency)
    agent_amount = (
        None if tuning.daily_amount_cap is None else policy.to_minor(tuning.daily_amount_cap, exponent)
    )
    if (
        queries.reserve_cap(
            session,
            scope=agent_scope(agent),
            day=day,
            amount_minor=amount_minor,
            count_cap=tuning.daily_count_cap,
            amount_cap_minor=agent_amount,
        )
        is None
    ):
        return "agent"
    return None


def release(session: Session, *, category: str, agent: str, day: str, amount_minor: int) -> None:
    """Give a reservation back to the category and the agent (rejection after reserve, failure)."""
    for name in (scope(category), agent_scope(agent)):
        queries.release_cap(session, scope=name, day=day, amount_minor=amount_minor)
