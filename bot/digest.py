"""The daily digest: how each agent and category did on one local day, ending with the chain head.

It is claimed with a uniquely keyed row per day, so replicas and restarts send it once; a
digest claimed well after `digest.at` (the server was down) says it is late.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot import audit, caps, chart, policy
from bot.mrkdwn import escape_cut
from bot.runtime import Runtime
from bot.settings import currency_exponent
from storage import queries
from storage.db import transaction
from storage.tables import Agent, AuditEvent, Decision, Draft, ScheduleClaim

LATE_AFTER = timedelta(hours=1)
CATCH_UP_DAYS = 7  # a day whose digest no replica posted (all down over its due time) is posted late


@dataclass
class Line:
    """The numbers of one (agent, category) pair."""

    submitted: int = 0
    approved: int = 0
    edited: int = 0
    rejected: int = 0
    expired: int = 0
    executed: int = 0
    failed: int = 0
    needs_reconciliation: int = 0
    high_risk: int = 0
    manual: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    decision_seconds: list[float] = field(default_factory=list)

    @property
    def edit_rate(self) -> float:
        return self.edited / self.approved if self.approved else 0.0


@dataclass
class Digest:
    day: date
    lines: dict[tuple[str, str], Line]
    caps: list[str]
    pauses: list[str]  # every pause and resume of the day: by people and automatic
    manual_periods: list[str]
    pending: int
    oldest_pending: datetime | None
    head: tuple[int, str]
    trend: list[tuple[str, int, int, int]]  # (day, approved, edited, rejected), oldest first
    late: bool = False

    def text(self) -> str:
        """The digest as plain text (Slack mrkdwn-compatible); `digest --print` prints exactly this."""
        return "\n".join(line for part in [self._title(), *self._pairs(), *self._closing()] for line in part)

    def slack_sections(self, budget: int, section: int = 2900) -> tuple[list[str], int]:
        """The digest as Slack section texts of at most `section` characters, `budget` in all.

        The title and the closing parts (caps, pauses, manual periods, pending, chain head) always
        show, their lists cut by whole lines; then as many agent · category parts as fit. Also
        returns how many lines were left out: the whole text then goes along as a file.
        """
        left_out = 0
        closing = []
        for part in self._closing():
            kept = _whole_lines(part, LIST_CHARS)
            if len(kept) < len(part):
                left_out += len(part) - len(kept)
                kept.append(f"… {len(part) - len(kept)} more lines in the attached file")
            closing.append(kept)
        title, pairs = self._title(), self._pairs()
        room = budget - _size(title) - sum(_size(part) for part in closing) - NOTE_CHARS
        shown = []
        for pair in pairs:
            if _size(pair) > room:
                break
            shown.append(pair)
            room -= _size(pair)
        parts = [title, *shown]
        if len(shown) < len(pairs):
            omitted = pairs[len(shown) :]
            left_out += sum(len(part) for part in omitted)
            parts.append([f"\n… {len(omitted)} more agent · category parts in the attached file"])
        return _pack([*parts, *closing], section), left_out

    def _title(self) -> list[str]:
        title = f"*Countersign daily digest — {self.day.isoformat()}*"
        return [title + (" (late: the server was down)" if self.late else "")] + (
            [] if self.lines else ["No drafts were submitted or decided."]
        )

    def _pairs(self) -> list[list[str]]:
        """One part per agent · category, each a list of lines."""
        parts = []
        for (agent, category), line in sorted(self.lines.items()):
            out = [f"\n*{agent} · {category}*"]
            out.append(
                f"submitted {line.submitted} · approved {line.approved} (edited {line.edited}, "
                f"edit rate {line.edit_rate:.0%}) · rejected {line.rejected} · expired {line.expired}"
            )
            out.append(
                f"executed {line.executed} · failed {line.failed} · needs reconciliation {line.needs_reconciliation}"
                f" · high-risk findings {line.high_risk}"
            )
            if line.manual:
                out.append(
                    "manual: " + ", ".join(f"{reason} {n}" for reason, n in sorted(line.manual.items()))
                )
            if line.reasons:
                top = "; ".join(
                    f"“{escape_cut(reason, 60)}” x{n}" for reason, n in line.reasons.most_common(3)
                )
                out.append(f"top rejection reasons: {top}")
            if line.decision_seconds:
                median = statistics.median(line.decision_seconds)
                p90 = _percentile(line.decision_seconds, 0.9)
                out.append(f"time to decision: median {_dur(median)}, p90 {_dur(p90)}")
            parts.append(out)
        return parts

    def _closing(self) -> list[list[str]]:
        """Caps, pauses, manual periods, and the last lines (pending, chain head)."""
        parts = [["\n*Caps*", *(self.caps or ["no caps configured"])]]
        if self.pauses:
            parts.append(["*Pauses*", *self.pauses])
        if self.manual_periods:
            parts.append(["*Manual periods*", *self.manual_periods])
        oldest = (
            "" if self.oldest_pending is None else f" (oldest since {self.oldest_pending:%Y-%m-%d %H:%M %Z})"
        )
        parts.append(
            [
                f"*Still pending*: {self.pending}{oldest}",
                f"*Audit chain head*: #{self.head[0]} {self.head[1]}",
            ]
        )
        return parts


LIST_CHARS = 2000  # the most of the Slack digest's caps, pauses or manual periods shown
NOTE_CHARS = 100  # room kept for the line that says agent · category parts were left out


def _size(lines: list[str]) -> int:
    return sum(len(line) + 1 for line in lines)


def _whole_lines(lines: list[str], limit: int) -> list[str]:
    """The first lines of `lines` that fit in `limit` characters (always the first)."""
    kept: list[str] = []
    for line in lines:
        if kept and _size([*kept, line]) > limit:
            break
        kept.append(line[:limit])
    return kept


def _pack(parts: list[list[str]], section: int) -> list[str]:
    """Whole parts joined into texts of at most `section` characters."""
    sections: list[str] = []
    current: list[str] = []
    for part in parts:
        if current and _size([*current, *part]) > section:
            sections.append("\n".join(current))
            current = []
        current.extend(part)
    if current:
        sections.append("\n".join(current))
    return [text[:section] for text in sections]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _dur(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def build(
    rt: Runtime, day: date, *, until: datetime | None = None, people: Mapping[str, str] | None = None
) -> Digest:
    """Compute the digest of a local calendar day (up to `until` when it is today). `people` maps
    Slack user ids to the names the digest shows (see _person)."""
    zone = rt.config.timezone
    start, end = policy.day_bounds(day, zone)
    if until is not None:
        end = min(end, until)
    with transaction(rt.engine, write=False) as session:
        names = {a.id: a.name for a in session.exec(select(Agent)).all()}
        lines: dict[tuple[str, str], Line] = defaultdict(Line)
        created = session.exec(
            select(Draft).where(col(Draft.created_at) >= start, col(Draft.created_at) < end)
        ).all()
        for draft in created:
            line = lines[(names.get(draft.agent_id, "?"), draft.category)]
            line.submitted += 1
            if draft.reason:
                line.manual[draft.reason] += 1
            if json.loads(draft.risk).get("level") == "high":
                line.high_risk += 1
        decided = session.exec(
            select(Draft).where(col(Draft.decided_at) >= start, col(Draft.decided_at) < end)
        ).all()
        for draft in decided:
            line = lines[(names.get(draft.agent_id, "?"), draft.category)]
            if draft.status == "expired":
                line.expired += 1
                continue
            if draft.status in ("executed", "failed", "needs_reconciliation"):
                setattr(line, draft.status, getattr(line, draft.status) + 1)
            if draft.status != "handled" and draft.decided_at is not None:
                line.decision_seconds.append((draft.decided_at - draft.created_at).total_seconds())
        decisions = session.exec(
            select(Decision, Draft)
            .join(Draft, col(Draft.id) == col(Decision.draft_id))
            .where(col(Decision.at) >= start, col(Decision.at) < end)
        ).all()
        for decision, draft in decisions:
            line = lines[(names.get(draft.agent_id, "?"), draft.category)]
            if decision.action in ("approve", "edit") and draft.decided_by == decision.by:
                line.approved += 1
                line.edited += decision.action == "edit" or draft.edited
            elif decision.action == "reject":
                line.rejected += 1
                line.reasons[(decision.reason or "").strip()] += 1
        cap_lines = _caps(session, rt, day)
        pauses, periods = _control_events(session, start, end, zone, people or {})
        pending, oldest = session.execute(
            sa.select(sa.func.count(), sa.func.min(col(Draft.created_at))).where(
                col(Draft.status) == "pending", col(Draft.created_at) < end
            )
        ).one()
        head = audit.head(session)
        trend = [_trend_day(session, day - timedelta(days=back), zone) for back in range(6, -1, -1)]
    return Digest(
        day=day,
        lines=dict(lines),
        caps=cap_lines,
        pauses=pauses,
        manual_periods=periods,
        pending=int(pending),
        oldest_pending=None if oldest is None else oldest.astimezone(zone),
        head=head,
        trend=trend,
    )


def _caps(session: Session, rt: Runtime, day: date) -> list[str]:
    out = []
    for name, category in sorted(rt.config.categories.items()):
        if category.daily_count_cap is None and category.daily_amount_cap is None:
            continue
        count_cap, amount_cap = caps.limits(session, category, day.isoformat())
        count_used, amount_used = queries.cap_usage(session, caps.scope(name), day.isoformat())
        usage = caps.Usage(
            category=name,
            day=day.isoformat(),
            currency=category.currency,
            exponent=currency_exponent(category.currency),
            count_cap=count_cap,
            amount_cap_minor=amount_cap,
            count_used=count_used,
            amount_used_minor=amount_used,
        )
        out.append(f"{name}: {usage.describe().replace(' today', '')}")
    return out


_CONTROL_ACTIONS = ("agent.paused", "agent.resumed", "category.manual", "category.review")


def _control_audit(session: Session, start: datetime, end: datetime) -> list[AuditEvent]:
    return list(
        session.exec(
            select(AuditEvent)
            .where(col(AuditEvent.at) >= start, col(AuditEvent.at) < end)
            .where(col(AuditEvent.action).in_(_CONTROL_ACTIONS))
            .order_by(col(AuditEvent.seq))
        ).all()
    )


def people_of(rt: Runtime, day: date) -> list[str]:
    """The Slack users the digest of `day` names (who paused, resumed, switched to manual)."""
    start, end = policy.day_bounds(day, rt.config.timezone)
    with transaction(rt.engine, write=False) as session:
        actors = {event.actor for event in _control_audit(session, start, end)}
    return sorted(a.removeprefix("slack:") for a in actors if a.startswith("slack:U"))


def _control_events(
    session: Session, start: datetime, end: datetime, zone: ZoneInfo, people: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    pauses, periods = [], []
    for event in _control_audit(session, start, end):
        after = json.loads(event.after) or {}
        agent = event.subject.removeprefix("agent:")
        at, by = _clock_time(event.at, zone), _person(event.actor, people)
        if event.action == "agent.paused":
            who = "automatically" if event.actor.startswith("system:") else f"by {by}"
            reason = escape_cut(str(after.get("reason") or "no reason given"), 200)
            pauses.append(f"{agent} paused at {at} {who}: {reason}")
        elif event.action == "agent.resumed":
            pauses.append(f"{agent} resumed at {at} by {by}")
        elif event.action == "category.manual":
            periods.append(f"{event.subject.removeprefix('category:')} manual from {at} by {by}")
        elif event.action == "category.review":
            periods.append(f"{event.subject.removeprefix('category:')} back to review at {at} by {by}")
    return pauses, periods


def _clock_time(at: datetime, zone: ZoneInfo) -> str:
    """A time of the digest's day as its readers live it: in the configured zone, named."""
    return f"{at.astimezone(zone):%H:%M %Z}"


def _trend_day(session: Session, day: date, zone: Any) -> tuple[str, int, int, int]:
    start, end = policy.day_bounds(day, zone)
    rows = session.execute(
        sa.select(col(Decision.action), sa.func.count())
        .where(col(Decision.at) >= start, col(Decision.at) < end)
        .group_by(col(Decision.action))
    ).all()
    counts = dict((row[0], int(row[1])) for row in rows)
    return day.isoformat(), counts.get("approve", 0), counts.get("edit", 0), counts.get("reject", 0)


def png(digest: Digest) -> bytes:
    return chart.bar_chart([(a, e, r) for _, a, e, r in digest.trend])


def claim_name(day: date) -> str:
    """The schedule claim that marks `day`'s digest as taken (one per day across replicas)."""
    return f"digest:{day.isoformat()}"


def claim_due(rt: Runtime, *, worker: str) -> tuple[date, bool] | None:
    """If yesterday's digest is due and unclaimed, claim it: (day, late). Once per day across replicas."""
    if rt.config.digest_channel is None:
        return None
    now = rt.clock()
    local = now.astimezone(rt.config.timezone)
    due_at = datetime.combine(local.date(), rt.config.digest_at, tzinfo=rt.config.timezone)
    if local < due_at:
        return None
    day = local.date() - timedelta(days=1)
    if not _existed_on(rt, day):
        return None
    late = local > due_at + LATE_AFTER
    return (day, late) if _claim(rt, day, late=late, worker=worker, now=now) else None


def _existed_on(rt: Runtime, day: date) -> bool:
    """Whether this installation had recorded anything by the end of `day`.

    A new installation's first start, after the digest's time, has no yesterday to report: its
    audit log begins today (with the first agent added), so that digest would be an empty one,
    posted late. An older installation, or one that was down all day, has an earlier event.
    """
    _, end = policy.day_bounds(day, rt.config.timezone)
    with transaction(rt.engine, write=False) as session:
        first = session.exec(select(AuditEvent.at).order_by(col(AuditEvent.seq)).limit(1)).first()
    return first is not None and first < end


def claim_missed(rt: Runtime, *, worker: str) -> list[date]:
    """Claim, to post late, the digests of the CATCH_UP_DAYS before yesterday that no replica
    posted (every one was down over that day's due time). Only days after the first digest ever
    claimed: a new installation, or one that just set a digest channel, posts no backlog."""
    if rt.config.digest_channel is None:
        return []
    now = rt.clock()
    yesterday = now.astimezone(rt.config.timezone).date() - timedelta(days=1)
    with transaction(rt.engine, write=False) as session:
        claimed = set(sent_days(session))
    if not claimed:
        return []
    first = min(date.fromisoformat(name.removeprefix("digest:")) for name in claimed)
    window = [yesterday - timedelta(days=back) for back in range(CATCH_UP_DAYS, 0, -1)]
    missed = [day for day in window if day > first and claim_name(day) not in claimed]
    return [day for day in missed if _claim(rt, day, late=True, worker=worker, now=now)]


def _claim(rt: Runtime, day: date, *, late: bool, worker: str, now: datetime) -> bool:
    """Claim `day`'s digest and enqueue its post; False when another replica has it."""
    try:
        with transaction(rt.engine) as session:
            session.add(ScheduleClaim(name=claim_name(day), claimed_by=worker, claimed_at=now, late=late))
            session.flush()
            queries.enqueue(session, "slack.digest", {"day": day.isoformat(), "late": late}, now=now)
    except IntegrityError:
        return False
    rt.wake_outbox()
    return True


def sent_days(session: Session) -> list[str]:
    return [
        c.name
        for c in session.exec(
            select(ScheduleClaim).where(col(ScheduleClaim.name).startswith("digest:"))
        ).all()
    ]


def _person(actor: str, people: Mapping[str, str]) -> str:
    """An audit actor as the digest names it, without notifying anyone every morning: a Slack
    user by the name Slack gave (`people`), or by id when it is not known; anything else as is."""
    if not actor.startswith("slack:U"):
        return actor
    user = actor.removeprefix("slack:")
    name = people.get(user)
    return f"@{escape_cut(name, 80)}" if name else user
