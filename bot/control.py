"""The kill switch and its relatives: pause/resume agents, manual mode, cap overrides.

Pulling the brake is easy (any reviewer); releasing it is not (admins only). Every flip is
committed, audited and announced before the command answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from bot import audit, caps, policy
from bot.runtime import Runtime
from bot.settings import currency_exponent, parse_duration
from bot.slack import Directory
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Draft

log = logging.getLogger(__name__)

COUNT = re.compile(r"[0-9]{1,7}")

HELP = """*`/agent` — Countersign controls*
• `/agent status` — agents, categories, pending work
• `/agent pause <agent|all> [reason]` — stop an agent now (any reviewer)
• `/agent resume <agent|all>` — let it work again (admins)
• `/agent manual <category> [duration, e.g. 2h]` — route a category to humans (any reviewer)
• `/agent review <category>` — back to review mode (admins)
• `/agent caps` — today's cap usage
• `/agent cap <category> [count=N] [amount=X]` — change today's caps (admins)
• `/agent help` — this text"""


class Refused(Exception):
    pass


@dataclass(frozen=True)
class AgentRow:
    name: str
    state: str
    reason: str | None
    offline: bool


@dataclass(frozen=True)
class CategoryRow:
    name: str
    mode: str
    until: str | None
    usage: str


@dataclass(frozen=True)
class Home:
    user: str
    can_pause: bool
    can_resume: bool
    all_paused: bool
    agents: list[AgentRow]
    categories: list[CategoryRow]
    pending: int
    oldest_pending: datetime | None
    now: datetime


def _announce(session: Session, rt: Runtime, text: str, now: datetime) -> None:
    if rt.config.alerts_channel:
        queries.enqueue(session, "slack.alert", {"text": text}, now=now)


def _refresh_pending(
    session: Session, now: datetime, *, agent_id: int | None = None, category: str | None = None
) -> None:
    """Re-render pending messages so they show (or drop) the paused / manual banner."""
    query = select(Draft.id).where(Draft.status == "pending")
    if agent_id is not None:
        query = query.where(Draft.agent_id == agent_id)
    if category is not None:
        query = query.where(Draft.category == category)
    for draft_id in session.exec(query.limit(500)).all():
        queries.enqueue(session, "slack.render", {"draft_id": draft_id}, now=now)


def _set_agent(session: Session, name: str, now: datetime, **values: Any) -> None:
    """Pause or resume one agent by name, and refresh its pending drafts' messages."""
    agent = session.exec(select(Agent).where(Agent.name == name)).first()
    if agent is None:
        raise Refused(f"No agent named `{name[:40]}`.")
    session.execute(sa.update(Agent).where(Agent.id == agent.id).values(**values))  # type: ignore[arg-type]
    _refresh_pending(session, now, agent_id=agent.id)


@dataclass
class Control:
    rt: Runtime
    directory: Directory

    def reviewers(self) -> frozenset[str]:
        people: set[str] = set(self.rt.config.admins)
        for category in self.rt.config.categories.values():
            people |= category.reviewers
        return frozenset(people)

    async def _member(self, user: str) -> bool:
        """A reviewer (any category, or its user group) or an admin, and a full, active account."""
        try:
            who = await self.directory.reviewer(user)
        except SlackApiError:
            raise Refused("Slack could not confirm who you are; nothing was changed.") from None
        if who.deleted or who.is_bot or who.is_guest:
            return False
        if user in self.reviewers():
            return True
        for category in self.rt.config.categories.values():
            if category.reviewer_group and user in await self.directory.reviewers(category):
                return True
        return False

    async def run(self, *, user: str, text: str) -> str:
        """Run one `/agent` subcommand for `user` and return the private answer."""
        try:
            return await self._run(user=user, text=text)
        except SQLAlchemyError:
            log.exception("control state unreadable")
            return (
                ":warning: Countersign cannot read or write its control state right now; nothing was changed."
            )

    async def _run(self, *, user: str, text: str) -> str:
        try:
            words = shlex.split(text)
        except ValueError:
            words = text.split()
        if not words or words[0] in ("help", "-h", "--help"):
            return HELP
        verb, args = words[0].lower(), words[1:]
        try:
            if verb in ("status", "caps"):
                if not await self._member(user):
                    raise Refused("Only reviewers and admins can see Countersign's state.")
                return await asyncio.to_thread(self.status if verb == "status" else self.caps_text)
            if verb in ("pause", "manual"):
                if not await self._member(user):
                    raise Refused("Only reviewers and admins can pull the brake.")
                if verb == "pause":
                    return await asyncio.to_thread(self.pause, user, args)
                return await asyncio.to_thread(self.manual, user, args)
            if verb in ("resume", "review", "cap"):
                if user not in self.rt.config.admins or not await self._member(user):
                    raise Refused(
                        f"Only admins can {verb}: releasing the brake and raising caps needs an admin."
                    )
                handler = {"resume": self.resume, "review": self.review, "cap": self.set_cap}[verb]
                return await asyncio.to_thread(handler, user, args)
        except Refused as refused:
            await asyncio.to_thread(self._audit_denied, user, verb, str(refused))
            return f":no_entry: {refused}"
        return f"Unknown command `{verb[:30]}`.\n\n{HELP}"

    def _audit_denied(self, user: str, verb: str, why: str) -> None:
        with transaction(self.rt.engine) as session:
            audit.append(
                session,
                at=self.rt.clock(),
                actor=f"slack:{user}",
                action=f"control.{verb}_denied",
                subject="control",
                after={"why": why},
                outcome="denied",
            )

    def pause(self, user: str, args: list[str]) -> str:
        if not args:
            raise Refused("Say which agent: `/agent pause <agent|all> [reason]`.")
        target, reason = args[0], " ".join(args[1:]) or "no reason given"
        now = self.rt.clock()
        with transaction(self.rt.engine) as session:
            if target == "all":
                queries.set_control(
                    session,
                    "pause:all",
                    {"by": user, "reason": reason, "at": now.isoformat()},
                    by=user,
                    at=now,
                )
                _refresh_pending(session, now)
            else:
                _set_agent(
                    session, target, now, state="paused", paused_by=user, paused_at=now, paused_reason=reason
                )
            audit.append(
                session,
                at=now,
                actor=f"slack:{user}",
                action="agent.paused",
                subject=f"agent:{target}",
                after={"reason": reason},
            )
            _announce(session, self.rt, f":octagonal_sign: <@{user}> paused *{target}*: {reason}", now)
        self.rt.wake_outbox()
        return f":octagonal_sign: Paused *{target}*. Nothing of it is approved or executed until an admin resumes it."

    def resume(self, user: str, args: list[str]) -> str:
        if not args:
            raise Refused("Say which agent: `/agent resume <agent|all>`.")
        target = args[0]
        now = self.rt.clock()
        with transaction(self.rt.engine) as session:
            if target == "all":
                if queries.get_control(session, "pause:all") is None:
                    return "Nothing to resume: `all` is not paused."
                queries.set_control(session, "pause:all", None, by=user, at=now)
                _refresh_pending(session, now)
            else:
                _set_agent(
                    session, target, now, state="active", paused_by=None, paused_at=None, paused_reason=None
                )
            audit.append(
                session, at=now, actor=f"slack:{user}", action="agent.resumed", subject=f"agent:{target}"
            )
            _announce(session, self.rt, f":arrow_forward: <@{user}> resumed *{target}*.", now)
        self.rt.wake_outbox()
        return f":arrow_forward: Resumed *{target}*."

    def _category(self, args: list[str], usage: str) -> str:
        if not args or args[0] not in self.rt.config.categories:
            known = ", ".join(sorted(self.rt.config.categories))
            raise Refused(f"Say which category ({known}): `{usage}`.")
        return args[0]

    def manual(self, user: str, args: list[str]) -> str:
        category = self._category(args, "/agent manual <category> [duration]")
        until: datetime | None = None
        now = self.rt.clock()
        if len(args) > 1:
            try:
                until = now + parse_duration(args[1])
            except ValueError as exc:
                raise Refused(str(exc)) from None
        with transaction(self.rt.engine) as session:
            value = {"mode": "manual", "by": user, "until": until.isoformat() if until else None}
            queries.set_control(session, f"mode:{category}", value, by=user, at=now)
            audit.append(
                session,
                at=now,
                actor=f"slack:{user}",
                action="category.manual",
                subject=f"category:{category}",
                after=value,
            )
            box = f" until {until:%Y-%m-%d %H:%M} UTC" if until else ""
            _announce(
                session, self.rt, f":raising_hand: <@{user}> switched *{category}* to manual mode{box}.", now
            )
            _refresh_pending(session, now, category=category)
        self.rt.wake_outbox()
        return f":raising_hand: *{category}* is in manual mode{box}: new drafts go to the human queue."

    def review(self, user: str, args: list[str]) -> str:
        category = self._category(args, "/agent review <category>")
        now = self.rt.clock()
        with transaction(self.rt.engine) as session:
            queries.set_control(session, f"mode:{category}", None, by=user, at=now)
            audit.append(
                session,
                at=now,
                actor=f"slack:{user}",
                action="category.review",
                subject=f"category:{category}",
            )
            _announce(
                session, self.rt, f":white_check_mark: <@{user}> returned *{category}* to review mode.", now
            )
            _refresh_pending(session, now, category=category)
        self.rt.wake_outbox()
        return f"*{category}* is back in review mode."

    def revert_lapsed(self) -> int:
        """End time-boxed manual modes whose deadline passed; announce each once."""
        now = self.rt.clock()
        reverted = 0
        with transaction(self.rt.engine) as session:
            for name in self.rt.config.categories:
                mode = queries.get_control(session, f"mode:{name}")
                if mode and mode.get("until") and not policy.is_manual(mode, now):
                    queries.set_control(session, f"mode:{name}", None, by="system:timebox", at=now)
                    audit.append(
                        session,
                        at=now,
                        actor="system:timebox",
                        action="category.review",
                        subject=f"category:{name}",
                        before=mode,
                    )
                    _announce(
                        session,
                        self.rt,
                        f":alarm_clock: Manual mode of *{name}* ended on schedule; back to review.",
                        now,
                    )
                    _refresh_pending(session, now, category=name)
                    reverted += 1
        if reverted:
            self.rt.wake_outbox()
        return reverted

    def set_cap(self, user: str, args: list[str]) -> str:
        category_name = self._category(args, "/agent cap <category> [count=N] [amount=X]")
        category = self.rt.config.categories[category_name]
        change: dict[str, Any] = {}
        for arg in args[1:]:
            key, _, value = arg.partition("=")
            if key == "count" and COUNT.fullmatch(value) and 0 < int(value) <= 1_000_000:
                change["count_cap"] = int(value)
            elif key == "amount":
                try:
                    amount = policy.parse_api_amount(value, currency_exponent(category.currency))
                except ValueError as exc:
                    raise Refused(f"amount: {exc}") from None
                change["amount_cap_minor"] = policy.to_minor(amount, currency_exponent(category.currency))
            else:
                raise Refused(f"Not understood: `{arg[:40]}`. Use count=N and/or amount=X.")
        if not change:
            raise Refused("Give count=N and/or amount=X.")
        now = self.rt.clock()
        day = policy.cap_day(now, self.rt.config.timezone)
        with transaction(self.rt.engine) as session:
            before = queries.get_control(session, f"cap:{category_name}") or {}
            # An override is for today only; yesterday's is dropped, not carried over.
            after = (before if before.get("day") == day else {}) | change | {"day": day}
            queries.set_control(session, f"cap:{category_name}", after, by=user, at=now)
            audit.append(
                session,
                at=now,
                actor=f"slack:{user}",
                action="category.cap",
                subject=f"category:{category_name}",
                before=before,
                after=after,
            )
            usage = caps.usage(session, self.rt.config, category, now)
            _announce(
                session,
                self.rt,
                f":bar_chart: <@{user}> set *{category_name}* caps: {usage.describe()}.",
                now,
            )
        self.rt.wake_outbox()
        return f"Caps of *{category_name}* now: {usage.describe()}."

    def caps_text(self) -> str:
        now = self.rt.clock()
        with transaction(self.rt.engine, write=False) as session:
            lines = [
                f"• *{name}*: {caps.usage(session, self.rt.config, category, now).describe()}"
                for name, category in sorted(self.rt.config.categories.items())
            ]
        return "*Today's caps*\n" + "\n".join(lines)

    def snapshot(self, user: str = "") -> Home:
        now = self.rt.clock()
        with transaction(self.rt.engine, write=False) as session:
            agents = session.exec(select(Agent).where(Agent.categories != "").order_by(Agent.name)).all()
            controls = queries.get_controls(
                session, ["pause:all", *[f"mode:{c}" for c in self.rt.config.categories]]
            )
            categories = []
            for name, category in sorted(self.rt.config.categories.items()):
                mode = controls.get(f"mode:{name}")
                manual = policy.is_manual(mode, now)
                categories.append(
                    CategoryRow(
                        name=name,
                        mode="manual" if manual else "review",
                        until=(mode or {}).get("until") if manual else None,
                        usage=caps.usage(session, self.rt.config, category, now).describe(),
                    )
                )
            pending, oldest = session.execute(
                sa.select(sa.func.count(), sa.func.min(Draft.created_at)).where(Draft.status == "pending")  # type: ignore[arg-type]
            ).one()
        oldest_at = oldest
        return Home(
            user=user,
            can_pause=user in self.reviewers(),
            can_resume=user in self.rt.config.admins,
            all_paused="pause:all" in controls,
            agents=[AgentRow(a.name, a.state, a.paused_reason, a.offline) for a in agents],
            categories=categories,
            pending=int(pending),
            oldest_pending=oldest_at,
            now=now,
        )

    def status(self) -> str:
        home = self.snapshot()
        lines = ["*Agents*"]
        if home.all_paused:
            lines.append(":octagonal_sign: *all agents paused*")
        for agent in home.agents:
            extra = f" — {agent.reason}" if agent.reason else ""
            lines.append(f"• *{agent.name}*: {agent.state}{' (offline)' if agent.offline else ''}{extra}")
        lines.append("*Categories*")
        for category in home.categories:
            until = f" until {category.until[:16]}" if category.until else ""
            lines.append(f"• *{category.name}*: {category.mode}{until} · {category.usage}")
        age = "" if home.oldest_pending is None else f", oldest {_age(home.now - home.oldest_pending)}"
        lines.append(f"*Pending*: {home.pending}{age}")
        return "\n".join(lines)

    async def home(self, *, user: str) -> Home:
        return await asyncio.to_thread(self.snapshot, user)


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
