"""What Countersign looks like right now, read-only: the App Home snapshot and the text of
`/agent status` and `/agent caps`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from bot import caps, policy
from bot.mrkdwn import escape_cut, slack_time
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Draft


@dataclass(frozen=True)
class AgentRow:
    name: str
    state: str  # its own state, `active | paused`
    reason: str | None
    offline: bool
    all_paused: bool = False  # `/agent pause all` holds it too, whatever its own state

    def state_text(self) -> str:
        """Its state as people read it: which pause holds it, its own, that of all agents, or both."""
        if not self.all_paused:
            return self.state
        if self.state == "paused":
            return "paused (on its own and with all agents)"
        return "paused (all agents)"


@dataclass(frozen=True)
class CategoryRow:
    name: str
    mode: str
    until: str | None
    usage: str
    fill: float | None = None  # the most used of its caps, count or amount, as a fraction


NOT_IN_SLACK_AFTER = timedelta(minutes=1)
UNFINISHED = {
    "approved": "approved, awaiting execution",
    "manual": "in the manual queue",
    "needs_reconciliation": "needing reconciliation",
}


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
    restricted: bool = False  # the user is no reviewer or admin: nothing of the state is shown
    # Drafts past review but not finished, by status: approved (awaiting execution), manual
    # (in the human queue), needs_reconciliation.
    unfinished: dict[str, int] = field(default_factory=dict)
    # Pending or manual drafts Slack has not taken for longer than NOT_IN_SLACK_AFTER: nobody can
    # see them to review (Slack down, or the bot not invited to the channel; the alerts say which).
    not_in_slack: int = 0

    def unfinished_text(self) -> str | None:
        """`2 approved, awaiting execution · 1 needs reconciliation`; None when there is none."""
        parts = [
            f"{self.unfinished[status]} {label}"
            for status, label in UNFINISHED.items()
            if self.unfinished.get(status)
        ]
        if self.not_in_slack:
            parts.append(f"{self.not_in_slack} not yet posted to Slack (see the alerts channel)")
        return " · ".join(parts) or None

    @classmethod
    def closed_to(cls, user: str, now: datetime) -> Home:
        return cls(
            user=user,
            can_pause=False,
            can_resume=False,
            all_paused=False,
            agents=[],
            categories=[],
            pending=0,
            oldest_pending=None,
            now=now,
            restricted=True,
        )


class Overview:
    """Control's read-only views: who the reviewers are, today's caps, the App Home snapshot."""

    rt: Runtime

    def reviewers(self) -> frozenset[str]:
        people: set[str] = set(self.rt.config.admins)
        for category in self.rt.config.categories.values():
            people |= category.reviewers
        return frozenset(people)

    def caps_text(self) -> str:
        now = self.rt.clock()
        with transaction(self.rt.engine, write=False) as session:
            lines = [
                f"• *{name}*: {caps.usage(session, self.rt.config, category, now).describe()}"
                for name, category in sorted(self.rt.config.categories.items())
            ]
        return "*Today's caps*\n" + "\n".join(lines)

    def snapshot(self, user: str = "", *, member: bool = False) -> Home:
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
                usage = caps.usage(session, self.rt.config, category, now)
                categories.append(
                    CategoryRow(
                        name=name,
                        mode="manual" if manual else "review",
                        until=(mode or {}).get("until") if manual else None,
                        usage=usage.describe(),
                        fill=usage.fill(),
                    )
                )
            pending, oldest = session.execute(
                sa.select(sa.func.count(), sa.func.min(Draft.created_at)).where(Draft.status == "pending")  # type: ignore[arg-type]
            ).one()
            unfinished = session.execute(
                sa.select(Draft.status, sa.func.count())  # type: ignore[call-overload]
                .where(col(Draft.status).in_(list(UNFINISHED)))
                .group_by(Draft.status)
            ).all()
            not_in_slack = session.execute(
                sa.select(sa.func.count()).where(
                    col(Draft.status).in_(["pending", "manual"]),
                    col(Draft.slack_ts).is_(None),
                    col(Draft.created_at) < now - NOT_IN_SLACK_AFTER,
                )
            ).scalar_one()
        oldest_at = oldest
        all_paused = "pause:all" in controls
        return Home(
            user=user,
            can_pause=member or user in self.reviewers(),
            can_resume=user in self.rt.config.admins,
            all_paused=all_paused,
            agents=[AgentRow(a.name, a.state, a.paused_reason, a.offline, all_paused) for a in agents],
            categories=categories,
            pending=int(pending),
            oldest_pending=oldest_at,
            now=now,
            unfinished={str(status): int(count) for status, count in unfinished},
            not_in_slack=int(not_in_slack),
        )

    def status(self) -> str:
        home = self.snapshot()
        lines = ["*Agents*"]
        if home.all_paused:
            lines.append(":octagonal_sign: *all agents paused*")
        for agent in home.agents:
            extra = f" — {escape_cut(agent.reason, 200)}" if agent.reason else ""
            offline = " (offline)" if agent.offline else ""
            lines.append(f"• *{agent.name}*: {agent.state_text()}{offline}{extra}")
        lines.append("*Categories*")
        for category in home.categories:
            until = f" until {slack_time(datetime.fromisoformat(category.until))}" if category.until else ""
            lines.append(f"• *{category.name}*: {category.mode}{until} · {category.usage}")
        age = "" if home.oldest_pending is None else f", oldest {_age(home.now - home.oldest_pending)}"
        lines.append(f"*Pending*: {home.pending}{age}")
        unfinished = home.unfinished_text()
        if unfinished:
            lines.append(f"*Also open*: {unfinished}")
        return "\n".join(lines)


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
