"""The state changes behind `/agent`: pause/resume agents, manual and review mode, cap overrides,
and the lapse of time-boxed manual modes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from bot import audit, caps, policy
from bot.mrkdwn import escape, escape_cut, slack_time
from bot.runtime import Runtime
from bot.settings import currency_exponent, parse_duration
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Draft

COUNT = re.compile(r"[0-9]{1,7}")
SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,}")


class Refused(Exception):
    pass


def apply_config_modes(rt: Runtime) -> list[str]:
    """Bring the stored mode switches in line with the config's `mode` keys, as the server starts;
    the categories whose mode this changed.

    `mode = "manual"` stores an open-ended manual switch set by "config" (replacing a time-boxed
    one, which would otherwise lapse into review); `/agent review` refuses to end it while the
    config says so. A category whose config no longer says manual loses the switch the config set,
    and keeps one a person set. Every change is audited and announced, as a person's would be.
    """
    now = rt.clock()
    changed = []
    for name, category in sorted(rt.config.categories.items()):
        with transaction(rt.engine, audited=True) as session:
            current = queries.get_control(session, f"mode:{name}")
            if category.mode == "manual" and (current is None or current.get("until") is not None):
                value = {"mode": "manual", "by": policy.SET_BY_CONFIG, "until": None}
                queries.set_control(session, f"mode:{name}", value, by=policy.SET_BY_CONFIG, at=now)
                action, text = (
                    "category.manual",
                    f":raising_hand: The config file sets *{name}* to manual mode.",
                )
            elif (
                category.mode == "review"
                and current is not None
                and current.get("by") == policy.SET_BY_CONFIG
            ):
                value = None
                queries.set_control(session, f"mode:{name}", None, by=policy.SET_BY_CONFIG, at=now)
                action, text = (
                    "category.review",
                    f":white_check_mark: The config file returned *{name}* to review mode.",
                )
            else:
                continue
            audit.append(
                session,
                at=now,
                actor=policy.SET_BY_CONFIG,
                action=action,
                subject=f"category:{name}",
                before=current,
                after=value,
            )
            _announce(session, rt, text, now)
            _refresh_pending(session, now, category=name)
        changed.append(name)
    if changed:
        rt.wake_outbox()
    return changed


def _set_by_config(rt: Runtime, category: str) -> Refused | None:
    if rt.config.categories[category].mode != "manual":
        return None
    return Refused(
        f'*{category}* is in manual mode because the config file says `mode = "manual"`;'
        " change it there and restart the server to change its mode."
    )


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


def _agent(session: Session, name: str) -> Agent:
    agent = session.exec(select(Agent).where(Agent.name == name)).first()
    if agent is None:
        raise Refused(f"No agent named `{name[:40]}`.")
    return agent


def _set_agent(session: Session, agent: Agent, now: datetime, *, from_state: str, **values: Any) -> bool:
    """Pause or resume one agent if it is still in `from_state`, and refresh its pending drafts'
    messages. One conditional UPDATE decides: of two clicks at once, exactly one changes it."""
    changed = session.execute(
        sa.update(Agent).where(Agent.id == agent.id, Agent.state == from_state).values(**values)  # type: ignore[arg-type]
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(agent)  # as whoever got there first left it
        return False
    _refresh_pending(session, now, agent_id=agent.id)
    return True


def _shortens(current: dict[str, Any] | None, until: datetime | None, now: datetime) -> bool:
    """Would manual mode `until` (None: open-ended) end sooner than the one in force now?"""
    if not policy.is_manual(current, now):
        return False
    ends = (current or {}).get("until")
    if ends is None:
        return until is not None
    return until is not None and until < datetime.fromisoformat(ends)


REASON_CHARS = 500  # of a pause's reason, in its alert and replies (the audit log keeps it whole)


def _reason(words: list[str]) -> str | None:
    """The free text after a command's arguments, kept whole for the audit log."""
    return " ".join(words) or None


def _said(reason: str | None) -> str:
    """`: reason`, escaped and cut for Slack, or nothing."""
    return f": {escape_cut(reason, REASON_CHARS)}" if reason else ""


def _released(
    session: Session,
    rt: Runtime,
    user: str,
    now: datetime,
    action: str,
    subject: str,
    why: str | None,
    text: str,
) -> None:
    """Audit a brake an admin released, with the reason they gave, and announce it (`text`)."""
    after = {"reason": why} if why else None
    audit.append(session, at=now, actor=f"slack:{user}", action=action, subject=subject, after=after)
    _announce(session, rt, text, now)


def _who(by: str | None) -> str:
    return f"<@{by}>" if by and SLACK_USER.fullmatch(by) else escape(by or "someone")


def _already_paused(target: str, by: str | None, at: datetime | str | None, reason: str | None) -> str:
    when = ""
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    if at is not None:
        when = f" since {slack_time(at.astimezone(UTC))}"
    why = f": {escape_cut(reason, REASON_CHARS)}" if reason else ""
    return f"*{target}* is already paused (by {_who(by)}{when}{why}). Nothing was changed."


class Switches:
    """Control's state changes: each is committed, audited and announced before it answers."""

    rt: Runtime

    def pause(self, user: str, args: list[str]) -> str:
        if not args:
            raise Refused("Say which agent: `/agent pause <agent|all> [reason]`.")
        target, reason = args[0], " ".join(args[1:]) or "no reason given"
        now = self.rt.clock()
        with transaction(self.rt.engine, audited=True) as session:
            # Pausing what is paused already changes nothing: the first pause keeps its who, when
            # and why, and no second alert or audit row claims a pause that did not happen.
            if target == "all":
                held = {"by": user, "reason": reason, "at": now.isoformat()}
                if not queries.add_control(session, "pause:all", held, by=user, at=now):
                    first = queries.get_control(session, "pause:all") or {}
                    return _already_paused("all", first.get("by"), first.get("at"), first.get("reason"))
                _refresh_pending(session, now)
            else:
                agent = _agent(session, target)
                if not _set_agent(
                    session,
                    agent,
                    now,
                    from_state="active",
                    state="paused",
                    paused_by=user,
                    paused_at=now,
                    paused_reason=reason,
                ):
                    return _already_paused(target, agent.paused_by, agent.paused_at, agent.paused_reason)
            audit.append(
                session,
                at=now,
                actor=f"slack:{user}",
                action="agent.paused",
                subject=f"agent:{target}",
                after={"reason": reason},
            )
            _announce(
                session,
                self.rt,
                f":octagonal_sign: <@{user}> paused *{target}*: {escape_cut(reason, REASON_CHARS)}",
                now,
            )
        self.rt.wake_outbox()
        return f":octagonal_sign: Paused *{target}*. Nothing of it is approved or executed until an admin resumes it."

    def resume(self, user: str, args: list[str]) -> str:
        if not args:
            raise Refused("Say which agent: `/agent resume <agent|all>`.")
        target = args[0]
        now = self.rt.clock()
        with transaction(self.rt.engine, audited=True) as session:
            # `resume all` lifts the pause of all only: an agent's own pause (by a reviewer for an
            # incident, or automatic) is released by name, deliberately. The answer lists them.
            still = [
                name
                for name in session.exec(
                    select(Agent.name)
                    .where(Agent.state == "paused", Agent.categories != "", Agent.name != target)
                    .order_by(Agent.name)
                ).all()
            ]
            note = f" Still paused on their own: {', '.join(f'*{n}*' for n in still)}." if still else ""
            if target == "all":
                if not queries.drop_control(session, "pause:all"):
                    return f"Nothing to resume: `all` is not paused.{note}"
                _refresh_pending(session, now)
            else:
                agent = _agent(session, target)
                held = ""
                if queries.get_control(session, "pause:all") is not None:
                    held = " It stays paused with all agents until `/agent resume all`."
                if not _set_agent(
                    session,
                    agent,
                    now,
                    from_state="paused",
                    state="active",
                    paused_by=None,
                    paused_at=None,
                    paused_reason=None,
                ):
                    mine = " on its own" if held else ""
                    return f"Nothing to resume: *{target}* is not paused{mine}.{held}"
                note = held + note
            why = _reason(args[1:])
            text = f":arrow_forward: <@{user}> resumed *{target}*{_said(why)}.{note}"
            _released(session, self.rt, user, now, "agent.resumed", f"agent:{target}", why, text)
        self.rt.wake_outbox()
        return f":arrow_forward: Resumed *{target}*.{note}"

    def _category(self, args: list[str], usage: str) -> str:
        if not args or args[0] not in self.rt.config.categories:
            known = ", ".join(sorted(self.rt.config.categories))
            raise Refused(f"Say which category ({known}): `{usage}`.")
        return args[0]

    def manual(self, user: str, args: list[str]) -> str:
        category = self._category(args, "/agent manual <category> [duration]")
        if refused := _set_by_config(self.rt, category):
            raise refused
        until: datetime | None = None
        now = self.rt.clock()
        if len(args) > 2:
            raise Refused(
                "Write the duration as one word, like `1h30m`: `/agent manual <category> [duration]`."
            )
        if len(args) > 1:
            try:
                until = now + parse_duration(args[1])
            except ValueError as exc:
                raise Refused(str(exc)) from None
            except OverflowError:
                raise Refused(f"Duration too long: `{args[1][:40]}`.") from None
        with transaction(self.rt.engine, audited=True) as session:
            current = queries.get_control(session, f"mode:{category}")
            if user not in self.rt.config.admins and _shortens(current, until, now):
                # Leaving manual mode is an admin's call; a shorter time box would be a way out.
                ends = (current or {}).get("until")
                held = (
                    f"until {slack_time(datetime.fromisoformat(ends))}" if ends else "until an admin ends it"
                )
                raise Refused(
                    f"*{category}* is in manual mode {held}; only admins can shorten it."
                    " A longer time box, or none, is fine."
                )
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
            box = f" until {slack_time(until)}" if until else ""
            _announce(
                session, self.rt, f":raising_hand: <@{user}> switched *{category}* to manual mode{box}.", now
            )
            _refresh_pending(session, now, category=category)
        self.rt.wake_outbox()
        return f":raising_hand: *{category}* is in manual mode{box}: new drafts go to the human queue."

    def review(self, user: str, args: list[str]) -> str:
        category = self._category(args, "/agent review <category>")
        if refused := _set_by_config(self.rt, category):
            raise refused
        now = self.rt.clock()
        why = _reason(args[1:])
        with transaction(self.rt.engine, audited=True) as session:
            if not queries.drop_control(session, f"mode:{category}"):
                return f"*{category}* is already in review mode. Nothing was changed."
            text = f":white_check_mark: <@{user}> returned *{category}* to review mode{_said(why)}."
            _released(session, self.rt, user, now, "category.review", f"category:{category}", why, text)
            _refresh_pending(session, now, category=category)
        self.rt.wake_outbox()
        return f"*{category}* is back in review mode."

    def revert_lapsed(self) -> int:
        """End time-boxed manual modes whose deadline passed; announce each once."""
        now = self.rt.clock()
        reverted = 0
        with transaction(self.rt.engine, audited=True) as session:
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
        with transaction(self.rt.engine, audited=True) as session:
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
            # Under a raised cap, passing 80% and reaching it are news again.
            peak = usage.peak()
            queries.rearm_cap_alerts(
                session, caps.scope(category_name), day, below_80=peak < 0.8, below_100=peak < 1.0
            )
            _announce(
                session,
                self.rt,
                f":bar_chart: <@{user}> set *{category_name}* caps: {usage.describe()}.",
                now,
            )
        self.rt.wake_outbox()
        return f"Caps of *{category_name}* now: {usage.describe()}."
