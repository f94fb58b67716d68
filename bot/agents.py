"""Agents: registration by operators (CLI), token checks, heartbeat and the agent's own status."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import select

from bot import audit, caps, netguard, policy
from bot.errors import Conflict, Invalid, NotFound, Unauthorized
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction
from storage.tables import Agent, AgentToken

NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "cs_" + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(frozen=True)
class Registered:
    name: str
    token: str
    callback_secret: str


def add(rt: Runtime, *, name: str, categories: list[str], callback_prefixes: list[str]) -> Registered:
    """Register an agent; its token and callback secret are returned once and stored hashed/kept."""
    if name == "all":
        raise Invalid("'all' names every agent in /agent pause and resume; pick another name", field="name")
    if not NAME_RE.fullmatch(name):
        raise Invalid(
            "agent names are lowercase slugs: a-z, 0-9, '-' and '_', up to 40 characters", field="name"
        )
    unknown = [c for c in categories if c not in rt.config.categories]
    if unknown:
        raise Invalid(f"unknown categories: {', '.join(unknown)}", field="categories")
    if not categories:
        raise Invalid("an agent needs at least one category", field="categories")
    # A bare origin ("https://hooks.example.com") stands for everything on that host.
    callback_prefixes = [p + "/" if re.fullmatch(r"https?://[^/\s]+", p) else p for p in callback_prefixes]
    for prefix in callback_prefixes:
        if not re.match(r"^https?://[^/\s]+/", prefix):
            raise Invalid(f"callback prefix must be an http(s) URL ending its host with '/': {prefix}")
        try:
            netguard.check_url(prefix)
        except ValueError as exc:
            raise Invalid(f"callback prefix refused: {exc}") from None
    token, secret = new_token(), new_webhook_secret()
    now = rt.clock()
    with transaction(rt.engine, audited=True) as session:
        if session.exec(select(Agent).where(Agent.name == name)).first() is not None:
            raise Invalid(f"agent {name!r} already exists", field="name")
        agent = Agent(
            name=name,
            categories=",".join(categories),
            callback_prefixes=json.dumps(callback_prefixes),
            callback_secret=secret,
            created_at=now,
        )
        session.add(agent)
        session.flush()
        session.add(AgentToken(agent_id=agent.id, token_hash=hash_token(token), created_at=now))  # type: ignore[arg-type]
        audit.append(
            session,
            at=now,
            actor="operator:cli",
            action="agent.added",
            subject=f"agent:{name}",
            after={"categories": categories, "callback_prefixes": callback_prefixes},
        )
    return Registered(name=name, token=token, callback_secret=secret)


def list_all(rt: Runtime) -> list[Agent]:
    with transaction(rt.engine, write=False) as session:
        return list(session.exec(select(Agent).order_by(Agent.name)).all())


def rotate(rt: Runtime, *, name: str) -> str:
    """Revoke every token of the agent and issue a new one."""
    token = new_token()
    now = rt.clock()
    with transaction(rt.engine, audited=True) as session:
        agent = _current_by_name(rt, name, session)
        session.execute(
            sa.update(AgentToken)
            .where(AgentToken.agent_id == agent.id, AgentToken.revoked_at.is_(None))  # type: ignore[arg-type,union-attr]
            .values(revoked_at=now)
        )
        session.add(AgentToken(agent_id=agent.id, token_hash=hash_token(token), created_at=now))  # type: ignore[arg-type]
        audit.append(
            session, at=now, actor="operator:cli", action="agent.token_rotated", subject=f"agent:{name}"
        )
    return token


def rotate_callback_secret(rt: Runtime, *, name: str, overlap: timedelta) -> tuple[str, datetime | None]:
    """Issue a new callback secret; return it and when the one it replaces stops signing.

    Until then callbacks carry a signature by each, so the agent can switch to the new secret
    without refusing a callback; with no overlap the old one stops at once (it leaked)."""
    if overlap < timedelta(0):
        raise Invalid("the overlap cannot be negative", field="overlap")
    secret, now = new_webhook_secret(), rt.clock()
    with transaction(rt.engine, audited=True) as session:
        agent = _current_by_name(rt, name, session)
        until = now + overlap if overlap else None
        agent.previous_callback_secret = agent.callback_secret if until else None
        agent.previous_callback_secret_until = until
        agent.callback_secret = secret
        session.add(agent)
        audit.append(
            session,
            at=now,
            actor="operator:cli",
            action="agent.callback_secret_rotated",
            subject=f"agent:{name}",
            after={"previous_secret_signs_until": until.isoformat() if until else None},
        )
    return secret, until


def callback_secrets(agent: Agent, now: datetime) -> str:
    """What signs the agent's callbacks, as `webhooks.sign` takes it: its secret, followed during a
    rotation's overlap by the one it replaced."""
    until = agent.previous_callback_secret_until
    if agent.previous_callback_secret and until is not None and now < until:
        return f"{agent.callback_secret} {agent.previous_callback_secret}"
    return agent.callback_secret


def remove(rt: Runtime, *, name: str) -> None:
    """Revoke the agent's tokens for good; its drafts and audit trail stay."""
    now = rt.clock()
    with transaction(rt.engine, audited=True) as session:
        agent = _by_name(rt, name, session)
        if not agent.categories:
            raise Conflict(f"agent {name!r} was already removed")
        session.execute(
            sa.update(AgentToken)
            .where(AgentToken.agent_id == agent.id, AgentToken.revoked_at.is_(None))  # type: ignore[arg-type,union-attr]
            .values(revoked_at=now)
        )
        agent.categories = ""
        session.add(agent)
        audit.append(session, at=now, actor="operator:cli", action="agent.removed", subject=f"agent:{name}")


def _by_name(rt: Runtime, name: str, session: Any) -> Agent:
    agent: Agent | None = session.exec(select(Agent).where(Agent.name == name)).first()
    if agent is None:
        raise NotFound(f"no agent named {name!r}")
    return agent


def _current_by_name(rt: Runtime, name: str, session: Any) -> Agent:
    """The agent, unless it was removed (no categories left): a token or secret for it could never work."""
    agent = _by_name(rt, name, session)
    if not agent.categories:
        raise Conflict(f"agent {name!r} was removed")
    return agent


def authenticate(rt: Runtime, token: str) -> Agent:
    """The agent a bearer token belongs to; 401 for anything else."""
    with transaction(rt.engine, write=False) as session:
        agent = queries.agent_for_token(session, hash_token(token))
    if agent is None or not agent.categories:
        raise Unauthorized("unknown or revoked agent token")
    return agent


@dataclass
class TokenCache:
    """Recently seen tokens, so intake's hot path skips a query before the draft is checked.
    Intake checks the token again in the transaction that stores the draft (a rotated or removed
    token gets 401 and stores nothing); every other endpoint authenticates against the database."""

    ttl: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, tuple[float, Agent]] = field(default_factory=dict)  # by token hash

    def get(self, token_hash: str) -> Agent | None:
        entry = self._entries.get(token_hash)
        if entry is None or self.clock() - entry[0] > self.ttl:
            return None
        return entry[1]

    def put(self, token_hash: str, agent: Agent) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[token_hash] = (self.clock(), agent)


def heartbeat(rt: Runtime, *, agent: Agent) -> dict[str, Any]:
    """Record that the agent is alive; an offline agent comes back online, audited."""
    now = rt.clock()
    # Nearly always the agent was online: record the time without the audit chain's lock.
    with transaction(rt.engine) as session:
        if queries.set_heartbeat(session, agent.id, now, online_only=True):  # type: ignore[arg-type]
            return {"ok": True, "at": now.isoformat()}
    with transaction(rt.engine, audited=True) as session:
        was_offline = queries.set_heartbeat(session, agent.id, now)  # type: ignore[arg-type]
        if was_offline:
            audit.append(
                session,
                at=now,
                actor=f"agent:{agent.name}",
                action="agent.online",
                subject=f"agent:{agent.name}",
                before={"offline": True},
                after={"offline": False},
            )
            if rt.config.alerts_channel:
                queries.enqueue(
                    session,
                    "slack.alert",
                    {
                        "text": f":large_green_circle: Agent *{agent.name}* is back online (heartbeat received)."
                    },
                    now=now,
                )
    if was_offline:
        rt.wake_outbox()
    return {"ok": True, "at": now.isoformat()}


def me(rt: Runtime, *, agent: Agent) -> dict[str, Any]:
    """The agent's state and today's mode and cap usage per allowed category."""
    now = rt.clock()
    with transaction(rt.engine, write=False) as session:
        fresh = session.get(Agent, agent.id)
        if fresh is None:
            raise Unauthorized("agent removed")
        names = [c for c in fresh.categories.split(",") if c in rt.config.categories]
        controls = queries.get_controls(session, ["pause:all", *[f"mode:{c}" for c in names]])
        categories: dict[str, Any] = {}
        for name in names:
            usage = caps.usage(session, rt.config, rt.config.categories[name], now)
            mode = controls.get(f"mode:{name}")
            categories[name] = {
                "mode": "manual" if policy.is_manual(mode, now) else "review",
                "count_cap": usage.count_cap,
                "count_used": usage.count_used,
                "amount_cap": None
                if usage.amount_cap_minor is None
                else str(policy.from_minor(usage.amount_cap_minor, usage.exponent)),
                "amount_used": str(policy.from_minor(usage.amount_used_minor, usage.exponent)),
                "currency": usage.currency,
            }
    paused_all = controls.get("pause:all")
    # DESIGN's agent state is active | paused; an active agent that missed its heartbeat says so in
    # `reason`, with the word its manual drafts carry.
    state = "paused" if fresh.state == "paused" or paused_all else "active"
    if fresh.state == "paused":
        reason = fresh.paused_reason
    elif paused_all:
        reason = paused_all.get("reason")
    else:
        reason = "agent_offline" if fresh.offline else None
    return {"name": fresh.name, "state": state, "reason": reason, "categories": categories}
