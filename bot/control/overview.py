"""What Countersign looks like right now, read-only: the App Home snapshot and the text of
`/agent status` and `/agent caps`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select

from bot import caps, policy
from bot.mrkdwn import escape
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Draft


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
    restricted: bool = False  # the user is no reviewer or admin: nothing of the state is shown

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
            can_pause=member or user in self.reviewers(),
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
            extra = f" — {escape(agent.reason)}" if agent.reason else ""
            lines.append(f"• *{agent.name}*: {agent.state}{' (offline)' if agent.offline else ''}{extra}")
        lines.append("*Categories*")
        for category in home.categories:
            until = f" until {category.until[:16]}" if category.until else ""
            lines.append(f"• *{category.name}*: {category.mode}{until} · {category.usage}")
        age = "" if home.oldest_pending is None else f", oldest {_age(home.now - home.oldest_pending)}"
        lines.append(f"*Pending*: {home.pending}{age}")
        return "\n".join(lines)


def _age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
