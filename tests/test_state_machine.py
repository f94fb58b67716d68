"""Model-based test of the review loop (AC-25, issue 6 item 5), on SQLite and on PostgreSQL.

A hypothesis `RuleBasedStateMachine` calls the use-cases directly (no HTTP, no Slack): submit
(also again with the same Idempotency-Key), approve and edit-and-approve as reviewers, outsiders,
guests and the requester, reject, retry, withdraw, pause and resume (one agent or all), manual
(optionally time-boxed) and review mode, cap changes, the executor's answer through the same gate
the outbox worker uses (`WebhookJobs._begin` then `_finish`), the agent's own report for a
category without an executor, expiry, the time-box revert, a restart (another engine on the
same database, with a pool and a Runtime of its own) and a frozen clock moved in small steps across local midnight and the America/New_York
DST change of 2026-11-01.

Next to it runs a plain reference model (drafts, pause flags, modes, caps, the expected audit
trail). After every step the database must agree with the model, and these hold:

- every status, version, amount, first approver and reservation day equals the model's;
- nothing was approved or executed while, by the model's timeline, its agent (or everyone) was
  paused or its category was in manual mode (checked on the database's own timestamps);
- the approver is a live reviewer of the category and never the requester; above
  `two_person_above` (or for a high-risk draft) two distinct approvers decided;
- for every cap scope and day, the `cap_usage` row equals the count and sum of the reservations
  held by approved, executed and needs-reconciliation drafts, and never exceeds the cap that was
  in force when the last reservation was taken;
- the audit log holds exactly the expected events, in order, and its hash chain verifies: after
  every step the rows the step added are rehashed with `audit.row_hash` and chained onto the
  head checked at the step before (still there, unchanged), and the log has no other rows;
  after every example `audit.verify` walks the whole chain once more, up to that same head;
- one `executor.call` job per approval and per retry, never more.

Budget: examples of up to 25 steps, 1000 on SQLite (AC-25: at least 1000 per CI run; about two
minutes) and 40 on PostgreSQL, whose examples each migrate a schema of their own (about 20 s).
`COUNTERSIGN_MODEL_EXAMPLES` sets both counts, `COUNTERSIGN_MODEL_EXAMPLES_SQLITE` or
`COUNTERSIGN_MODEL_EXAMPLES_POSTGRESQL` one of them. A SQLite example starts from a copy of a
database migrated and seeded once per run (`SqliteHome`), which is what makes 1000 affordable.
Runs are derandomized, so a failure reproduces as is.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import event as observe
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.engine import Engine
from sqlmodel import col

from bot import agents, audit, decisions, drafts, intake, policy
from bot.control import Control
from bot.control.switches import Refused
from bot.errors import Conflict, DecisionRefused, IdempotencyMismatch, NotFound
from bot.outbox import NotAttempted
from bot.runtime import Runtime
from bot.schemas import DoneIn, DraftIn
from bot.settings import load_settings
from bot.webhooks import BREAKER_THRESHOLD, WebhookJobs
from storage import migrate, queries
from storage.db import create_db_engine, transaction
from storage.tables import AuditEvent, CapUsage, Draft, OutboxJob
from tests.conftest import PG_URL, FrozenClock, make_env, write_config

# Examples per database: SQLite's are cheap (a copied template, incremental audit checks),
# PostgreSQL's still migrate a schema of their own each.
DEFAULT_EXAMPLES = {"sqlite": 1000, "postgresql": 40}


def max_examples(db_kind: str) -> int:
    """COUNTERSIGN_MODEL_EXAMPLES_SQLITE / _POSTGRESQL, else COUNTERSIGN_MODEL_EXAMPLES (both)."""
    for name in (f"COUNTERSIGN_MODEL_EXAMPLES_{db_kind.upper()}", "COUNTERSIGN_MODEL_EXAMPLES"):
        if name in os.environ:
            return int(os.environ[name])
    return DEFAULT_EXAMPLES[db_kind]


SETTINGS = settings(
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


SECOND_EDIT_RESTARTS_APPROVAL = True
# - The executor breaker trips at every run of BREAKER_THRESHOLD failures (not only the first) and
#   replaces a time-boxed manual mode.
BREAKER_TRIPS_AGAIN = True

# support-bot also has caps of its own, so both reservation scopes are exercised.
AGENT_CAPS = '\n[agents.support-bot]\ndaily_count_cap = 6\ndaily_amount_cap = "400.00"\n'
AGENTS = ("support-bot", "other-bot")
CATEGORIES = ("refund", "reply")
REVIEWERS = {
    "refund": frozenset({"U0ALICE", "U0BOB", "U0ADMIN", "U0GUEST", "U0GONE"}),
    "reply": frozenset({"U0ALICE", "U0BOB", "U0CAROL"}),
}
# Alice, Bob and the admin review refunds; Carol only replies; Out nothing; the guest and the
# deactivated account are listed as refund reviewers but Slack says they may not decide.
USERS = ("U0ALICE", "U0BOB", "U0ADMIN", "U0CAROL", "U0OUT", "U0GUEST", "U0GONE")
AMOUNTS = ("30.00", "120.00", "200.00", "250.00", "350.00")
EDITED_AMOUNTS = (None, None, Decimal("50.00"), Decimal("210.00"), Decimal("310.00"))
KEYS = (None, "k1", "k2", "k3")
Submission = tuple[str, str, str, str | None, str | None]  # agent, category, amount, requested_by, key
SUBMISSIONS = st.tuples(
    st.sampled_from(AGENTS),
    st.sampled_from(("refund", "refund", "refund", "reply")),
    st.sampled_from(AMOUNTS),
    st.sampled_from((None, None, "U0BOB")),
    st.sampled_from(KEYS),
)
HELD = ("approved", "executed", "needs_reconciliation")
DECIDED = ("approved", "rejected", "executed", "failed", "needs_reconciliation")
# Limits as configured (count, amount in cents); `/agent cap` overrides the category's.
CATEGORY_LIMITS: dict[str, tuple[int | None, int | None]] = {"refund": (20, 50_000), "reply": (300, None)}
AGENT_LIMITS: dict[str, tuple[int | None, int | None]] = {"support-bot": (6, 40_000)}
TWO_PERSON_ABOVE = 20_000
MAX_AMOUNT = 30_000
EXPIRE_AFTER = {"refund": timedelta(hours=4), "reply": timedelta(hours=24)}
IDEMPOTENCY_RETENTION = timedelta(hours=24)
BREAKER_BURST, BREAKER_BURST_WINDOW, BREAKER_WINDOW = 3, timedelta(minutes=10), 20
# America/New_York left daylight time at 06:00Z on 2026-11-01; the model computes the local day
# with this offset table, not with zoneinfo, so it checks the product's day key independently.
DST_END = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
STARTS = (
    datetime(2026, 11, 1, 2, 30, tzinfo=UTC),  # 22:30 EDT on Oct 31: midnight, then the DST change
    datetime(2026, 11, 1, 3, 58, tzinfo=UTC),  # 23:58 EDT: a minute or two before midnight
    datetime(2026, 11, 1, 5, 57, tzinfo=UTC),  # 01:57 EDT: the hour that happens twice
    datetime(2026, 11, 2, 4, 56, tzinfo=UTC),  # 23:56 EST on Nov 1, the 25-hour day
)
SWITCHES: tuple[tuple[Any, ...], ...] = (
    *(("pause", who, user) for who in (*AGENTS, "all") for user in ("U0ALICE", "U0ADMIN")),
    *(("resume", who) for who in (*AGENTS, "all")),
    *(("manual", c, d) for c in CATEGORIES for d in (None, timedelta(minutes=30), timedelta(hours=2))),
    *(("review", c) for c in CATEGORIES),
    ("cap", "refund", 2, None),
    ("cap", "refund", 3, "250.00"),
    ("cap", "refund", None, "400.00"),
    ("cap", "refund", 20, "500.00"),
    ("cap", "reply", 2, None),
)
STEPS: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=9),
    timedelta(minutes=47),
    timedelta(hours=2),
)
STEPS += (timedelta(hours=4, minutes=1), timedelta(hours=13))

# What the invariant reads after every step, built once: SQLAlchemy then computes each statement's
# cache key once rather than at every step.
_draft: sa.Table = Draft.__table__  # type: ignore[attr-defined]
_cap_usage: sa.Table = CapUsage.__table__  # type: ignore[attr-defined]
_outbox: sa.Table = OutboxJob.__table__  # type: ignore[attr-defined]
_audit: sa.Table = AuditEvent.__table__  # type: ignore[attr-defined]
_DRAFT_COLUMNS = (
    "id",
    "agent_id",
    "category",
    "status",
    "version",
    "amount_minor",
    "body",
    "requested_by",
    "first_approver",
    "approvals_needed",
    "decided_by",
    "decided_at",
    "reservation_day",
    "execution_attempts",
    "updated_at",
)
DRAFTS = sa.select(*(_draft.c[name] for name in _DRAFT_COLUMNS))
CAP_USAGE = sa.select(*(_cap_usage.c[name] for name in ("scope", "day", "count_used", "amount_used_minor")))
EXECUTOR_JOBS = sa.select(_outbox.c.payload).where(_outbox.c.kind == "executor.call")
# The audit rows from a given one on, each with the number of rows in the whole log.
AUDIT_FROM = (
    sa.select(_audit, sa.select(sa.func.count()).select_from(_audit).scalar_subquery().label("rows"))
    .where(_audit.c.seq >= sa.bindparam("seq"))
    .order_by(_audit.c.seq)
)
AUDIT_TRAIL = sa.select(_audit.c.action, _audit.c.subject).order_by(_audit.c.seq)


def local_day(at: datetime) -> str:
    assert datetime(2026, 3, 8, 7, tzinfo=UTC) <= at < datetime(2027, 3, 14, 7, tzinfo=UTC)
    offset = timedelta(hours=-4) if at < DST_END else timedelta(hours=-5)
    return (at + offset).date().isoformat()


def minor(text: str | Decimal) -> int:
    return int(Decimal(text) * 100)


@dataclass
class MDraft:
    id: str
    agent: str
    category: str
    amount: int | None
    body: str
    requested_by: str | None
    status: str
    expires_at: datetime
    approvals_needed: int
    version: int = 1
    first_approver: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    reservation_day: str | None = None
    attempts: int = 0
    executor_jobs: int = 0


@dataclass
class Timeline:
    """When each pause and mode switch changed, to ask what held at a past instant."""

    changes: list[tuple[datetime, str, Any]] = field(default_factory=list)

    def record(self, at: datetime, key: str, value: Any) -> None:
        self.changes.append((at, key, value))

    def value(self, key: str, at: datetime) -> Any:
        current = None
        for when, name, value in self.changes:
            if name == key and when <= at:
                current = value
        return current


def seed(rt: Runtime) -> dict[str, str]:
    """Migrate an empty database and register the agents (at `rt`'s clock): each agent's token."""
    migrate.upgrade(rt.engine)
    return {
        name: agents.add(rt, name=name, categories=list(CATEGORIES), callback_prefixes=[]).token
        for name in AGENTS
    }


def _scratch_dir() -> Path:
    """A directory for SQLite files: in memory (/dev/shm) where there is one, since the examples
    commit some 25 000 times per run and each `synchronous=FULL` commit waits for an fsync;
    what these files would keep across a power cut is the crash tests' subject, not this one's."""
    shm = Path("/dev/shm")  # noqa: S108  (mkdtemp makes a private directory in it)
    memory = shm.is_dir() and os.access(shm, os.W_OK)
    return Path(tempfile.mkdtemp(prefix="cs-model-", dir=shm if memory else None))


class SqliteHome:
    """Where every SQLite example runs: one file, reset before each example to a copy of a seeded
    template, and two engines on it that the examples take over in turn.

    Seeding (the Alembic migrations, then registering the agents, as each example used to) is
    most of an example's set-up, and a copy of the seeded file is the same database. The engines
    are kept so that SQLAlchemy compiles each statement once per run rather than once per
    example and restart: an example starts on the first, a restart moves to the other one. Each
    engine's pool is emptied when it is left and after every example, so what a new process
    would not have (connections, the Runtime) is new each time; only compiled SQL carries over.
    """

    def __init__(self) -> None:
        self.dir = _scratch_dir()
        self.path = self.dir / "countersign.db"
        self.template = self.dir / "template.db"
        self.settings = load_settings(
            make_env(f"sqlite:///{self.path}", write_config(self.dir, extra=AGENT_CAPS))
        )
        engine = create_db_engine(f"sqlite:///{self.template}", pool_size=1)
        try:
            self.tokens = seed(
                Runtime(engine=engine, config=self.settings.config, clock=FrozenClock(STARTS[0]))
            )
        finally:
            engine.dispose()
        # Move the WAL into the file and empty it: the file alone is then the whole database and
        # a byte copy of it is consistent (nothing writes to the template again).
        with contextlib.closing(sqlite3.connect(self.template)) as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        wal = self.template.with_name(f"{self.template.name}-wal")
        assert busy == 0 and (not wal.exists() or wal.stat().st_size == 0), "the template's WAL is not empty"
        url = self.settings.database_url
        self.engines = (create_db_engine(url, pool_size=2), create_db_engine(url, pool_size=2))

    def restarted(self, engine: Engine) -> Engine:
        """The engine a restarted server gets: the other one (`engine` was disposed)."""
        return self.engines[1] if engine is self.engines[0] else self.engines[0]

    def files(self) -> list[Path]:
        return [self.path.with_name(self.path.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]

    def reset(self) -> None:
        """A fresh database: the template's copy (`clear` removed the last one, its WAL and all)."""
        assert not any(path.exists() for path in self.files()), "the last example's database is still there"
        shutil.copyfile(self.template, self.path)

    def clear(self) -> None:
        for engine in self.engines:  # no pooled connection outlives its example's file
            engine.dispose()
        for path in self.files():
            path.unlink(missing_ok=True)

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sqlite_home() -> Iterator[SqliteHome]:
    home = SqliteHome()
    try:
        yield home
    finally:
        home.close()


class Schema:
    """A PostgreSQL schema of the example's own (migrated and seeded by the example)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cs-model-"))
        self.name = "m_" + secrets.token_hex(6)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.name}")
        url = f"{PG_URL}?options=-csearch_path%3D{self.name}"
        self.settings = load_settings(make_env(url, write_config(self.dir, extra=AGENT_CAPS)))

    def drop(self) -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {self.name} CASCADE")
        shutil.rmtree(self.dir, ignore_errors=True)


class ReviewLoop(RuleBasedStateMachine):
    HOME: SqliteHome | None = None  # set for SQLite; PostgreSQL gets a schema per example

    def __init__(self) -> None:
        super().__init__()
        self.clock = FrozenClock(STARTS[0])
        ids = itertools.count(1)
        self.new_id = lambda: f"d_{next(ids):06d}"
        self.schema: Schema | None = None
        if self.HOME is not None:
            self.HOME.reset()
            self.settings, self.engine, tokens = self.HOME.settings, self.HOME.engines[0], self.HOME.tokens
            self.rt = self._runtime()
        else:
            self.schema = Schema()
            self.settings = self.schema.settings
            self.engine = create_db_engine(self.settings.database_url, pool_size=2)
            self.rt = self._runtime()
            tokens = seed(self.rt)
        self.agents = {name: agents.authenticate(self.rt, token) for name, token in tokens.items()}
        # The model.
        self.drafts: dict[str, MDraft] = {}
        self.paused = dict.fromkeys(AGENTS, False)
        self.pause_all = False
        self.modes: dict[str, dict[str, Any] | None] = dict.fromkeys(CATEGORIES)
        # category -> (the local day it was set, the change): `/agent cap` holds for that day only
        self.cap_override: dict[str, tuple[str, dict[str, int]]] = {name: ("", {}) for name in CATEGORIES}
        self.usage: dict[tuple[str, str], list[int]] = {}
        self.bound: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        self.executor_failures = 0
        self.keys: dict[tuple[str, str], tuple[datetime, str, dict[str, Any]]] = {}
        self.audit: list[tuple[str, str]] = [("agent.added", f"agent:{name}") for name in AGENTS]
        self.chain_head = (0, audit.GENESIS)  # the newest audit row checked so far: seq, hash
        self.timeline = Timeline()

    def _runtime(self) -> Runtime:
        return Runtime(engine=self.engine, config=self.settings.config, clock=self.clock, new_id=self.new_id)

    def teardown(self) -> None:
        try:
            # After a clean run (not while a failure is on its way out, which this would mask), the
            # whole log once more: the step-by-step checks read only the rows each step added.
            if sys.exc_info()[0] is None:
                self.whole_audit_log_verifies()
        finally:
            self.engine.dispose()
            if self.HOME is not None:
                self.HOME.clear()
            if self.schema is not None:
                self.schema.drop()

    @property
    def now(self) -> datetime:
        return self.clock.now

    def tick(self) -> None:
        """Every step happens at its own instant, so the database's timestamps order the steps."""
        self.clock.advance(seconds=1)

    # -- model helpers ---------------------------------------------------------------------

    def manual(self, category: str, at: datetime | None = None) -> bool:
        mode = self.modes[category] if at is None else self.timeline.value(f"mode:{category}", at)
        if not mode:
            return False
        return mode["until"] is None or mode["until"] > (at or self.now)

    def blocked(self, draft: MDraft) -> bool:
        return self.paused[draft.agent] or self.pause_all or self.manual(draft.category)

    def category_limits(self, category: str) -> tuple[int | None, int | None]:
        count, amount = CATEGORY_LIMITS[category]
        day, override = self.cap_override[category]
        if day != local_day(self.now):
            return count, amount
        return override.get("count_cap", count), override.get("amount_cap_minor", amount)

    def scopes(self, draft: MDraft) -> list[tuple[str, tuple[int | None, int | None]]]:
        return self.scopes_of(draft.agent, draft.category)

    def scopes_of(self, agent: str, category: str) -> list[tuple[str, tuple[int | None, int | None]]]:
        """Each cap scope with today's limits: the category's, and the agent's own if it has some."""
        scopes = [(f"category:{category}", self.category_limits(category))]
        if agent in AGENT_LIMITS:
            scopes.append((f"agent:{agent}", AGENT_LIMITS[agent]))
        return scopes

    @staticmethod
    def fits(used: list[int], limits: tuple[int | None, int | None], amount: int) -> bool:
        count_cap, amount_cap = limits
        return (count_cap is None or used[0] + 1 <= count_cap) and (
            amount_cap is None or used[1] + amount <= amount_cap
        )

    def try_reserve(self, draft: MDraft, amount: int | None, day: str) -> bool:
        scopes = self.scopes(draft)
        if not all(self.fits(self.usage.get((s, day), [0, 0]), limits, amount or 0) for s, limits in scopes):
            return False
        for scope, limits in scopes:
            used = self.usage.setdefault((scope, day), [0, 0])
            used[0] += 1
            used[1] += amount or 0
            self.bound[(scope, day)] = limits
        return True

    def release(self, draft: MDraft) -> None:
        assert draft.reservation_day is not None
        for scope, _ in self.scopes(draft):
            used = self.usage.get((scope, draft.reservation_day))
            if used and used[0] >= 1:
                used[0] -= 1
                used[1] = max(used[1] - (draft.amount or 0), 0)

    def set_paused(self, agent: str, value: bool) -> None:
        self.paused[agent] = value
        self.timeline.record(self.now, f"paused:{agent}", value)

    def set_pause_all(self, value: bool) -> None:
        self.pause_all = value
        self.timeline.record(self.now, "pause:all", value)

    def set_mode(self, category: str, value: dict[str, Any] | None) -> None:
        self.modes[category] = value
        self.timeline.record(self.now, f"mode:{category}", value)

    def event(self, action: str, subject: str) -> None:
        self.audit.append((action, subject))

    def changed(self, draft: MDraft, to: str, action: str) -> None:
        draft.status = to
        self.event(action, draft.id)

    def pick(self, index: int, *statuses: str, category: str | None = None) -> MDraft | None:
        candidates = [
            d
            for d in self.drafts.values()
            if (not statuses or d.status in statuses) and category in (None, d.category)
        ]
        return candidates[index % len(candidates)] if candidates else None

    @staticmethod
    def reviewer(user: str) -> policy.Reviewer:
        return policy.Reviewer(user, deleted=user == "U0GONE", is_guest=user == "U0GUEST")

    # -- rules -----------------------------------------------------------------------------

    @initialize(start=st.sampled_from(STARTS), first=st.lists(SUBMISSIONS, min_size=1, max_size=4))
    def start(self, start: datetime, first: list[Submission]) -> None:
        """Set the clock near a day boundary and start with a few drafts already submitted."""
        self.clock.now = start
        for submission in first:
            self.submit(*submission)

    def _draft_in(self, category: str, amount: str | None, requested_by: str | None) -> DraftIn:
        if category == "refund":
            fields: dict[str, Any] = {
                "summary": "Refund for order 1234",
                "body": "We refunded the order to your original payment method.",
                "context": f"Customer: please refund my order of ${amount}.",
                "amount": amount,
            }
        else:
            fields = {
                "summary": "Where is my order",
                "body": "Thanks for writing in: your order ships tomorrow.",
                "context": "Customer: where is my order?",
            }
        if requested_by is not None:
            fields["requested_by"] = requested_by
        return DraftIn.model_validate({"category": category, **fields})

    @rule(submission=SUBMISSIONS)
    def submit_draft(self, submission: Submission) -> None:
        self.submit(*submission)

    def submit(
        self, agent: str, category: str, amount: str, requested_by: str | None, key: str | None
    ) -> None:
        self.tick()
        self._submit(
            agent, self._draft_in(category, amount if category == "refund" else None, requested_by), key
        )

    @precondition(lambda self: self.keys)
    @rule(index=st.integers(0, 50), same=st.sampled_from((True, True, False)))
    def submit_again_with_the_same_key(self, index: int, same: bool) -> None:
        """A retried request: the same Idempotency-Key with the same body, or with a changed one."""
        self.tick()
        (agent, key) = sorted(self.keys)[index % len(self.keys)]
        first = self.keys[(agent, key)][2]
        body = first["draft_in"]
        if not same:
            amount = "31.00" if body.get("amount") != "31.00" else "32.00"
            body = body | {"category": "refund", "amount": amount, "context": "Customer: refund $31."}
        self._submit(agent, DraftIn.model_validate(body), key)

    def _submit(self, agent: str, draft_in: DraftIn, key: str | None) -> None:
        fingerprint = intake.request_fingerprint(draft_in)
        stored = self.keys.get((agent, key)) if key is not None else None
        if stored is not None and stored[0] > self.now - IDEMPOTENCY_RETENTION:
            if stored[1] != fingerprint:
                with pytest.raises(IdempotencyMismatch):
                    self._call_submit(agent, draft_in, key)
                return
            status, body = self._call_submit(agent, draft_in, key)
            assert (status, body) == (202, stored[2]["answer"]), "a replay must repeat the stored answer"
            return
        status, body = self._call_submit(agent, draft_in, key)
        assert status == 202
        category = draft_in.category
        amount = None if draft_in.amount is None else minor(draft_in.amount)
        day = local_day(self.now)
        if self.paused[agent] or self.pause_all:
            reason: str | None = "agent_paused"
        elif self.manual(category):
            reason = "category_manual"
        elif not all(
            self.fits(self.usage.get((scope, day), [0, 0]), limits, amount or 0)
            for scope, limits in self.scopes_of(agent, category)
        ):
            reason = "over_cap"
        else:
            reason = None
        expected = {"id": body["id"], "status": "manual" if reason else "pending", "url": body["url"]}
        if reason:
            expected["reason"] = reason
        assert body == expected
        observe(f"submit: {reason or 'pending'}")
        assert body["id"] not in self.drafts
        high_risk = amount is not None and amount > MAX_AMOUNT
        self.drafts[body["id"]] = MDraft(
            id=body["id"],
            agent=agent,
            category=category,
            amount=amount,
            body=draft_in.body,
            requested_by=draft_in.requested_by,
            status=expected["status"],
            expires_at=self.now + EXPIRE_AFTER[category],
            approvals_needed=2 if high_risk or (amount or 0) > TWO_PERSON_ABOVE else 1,
        )
        self.event("draft.submitted", body["id"])
        if key is not None:
            answer = {"answer": body, "draft_in": draft_in.model_dump(exclude_none=True)}
            self.keys[(agent, key)] = (self.now, fingerprint, answer)

    def _call_submit(self, agent: str, draft_in: DraftIn, key: str | None) -> tuple[int, dict[str, Any]]:
        return intake.submit(
            self.rt, agent=self.agents[agent], draft=draft_in, key=key, base_url="http://cs.test"
        )

    @precondition(lambda self: any(d.status == "pending" for d in self.drafts.values()))
    @rule(
        index=st.integers(0, 50),
        user=st.sampled_from(("U0ALICE", "U0BOB", "U0ADMIN")),
        edit_body=st.sampled_from((False, False, True)),
        edit_amount=st.sampled_from(EDITED_AMOUNTS),
    )
    def approve_pending(self, index: int, user: str, edit_body: bool, edit_amount: Decimal | None) -> None:
        """A reviewer approves (or edits and approves) a pending draft's current version; a draft
        waiting for its second approval is picked first every other time."""
        waiting = [d for d in self.drafts.values() if d.status == "pending" and d.first_approver]
        draft = waiting[index % len(waiting)] if waiting and index % 2 else self.pick(index, "pending")
        assert draft is not None
        self.approve(draft, user, False, edit_body, edit_amount)

    @precondition(lambda self: self.drafts)
    @rule(
        index=st.integers(0, 50),
        user=st.sampled_from(USERS),
        stale=st.sampled_from((False, False, True)),
        edit_body=st.sampled_from((False, False, True)),
        edit_amount=st.sampled_from(EDITED_AMOUNTS),
    )
    def approve_anything(
        self, index: int, user: str, stale: bool, edit_body: bool, edit_amount: Decimal | None
    ) -> None:
        """Anyone clicks Approve on any draft's message, possibly a stale one."""
        draft = self.pick(index)
        assert draft is not None
        self.approve(draft, user, stale, edit_body, edit_amount)

    def approve(
        self, draft: MDraft, user: str, stale: bool, edit_body: bool, edit_amount: Decimal | None
    ) -> None:
        self.tick()
        if draft.category != "refund":
            edit_amount = None
        version = draft.version + (1 if stale else 0)
        body = "Edited: we refunded your order." if edit_body else None
        expected = self._expected_approval(draft, user, version, body, edit_amount)
        observe(f"approve: {expected}")
        try:
            outcome = decisions.approve(
                self.rt,
                draft_id=draft.id,
                version=version,
                user=user,
                reviewers=REVIEWERS[draft.category],
                reviewer=self.reviewer(user),
                edited_body=body,
                edited_amount=edit_amount,
            )
        except DecisionRefused as refused:
            assert expected.startswith(("refused", "denied")), (
                f"refused ({refused.message}), model expected {expected}"
            )
            if expected == "denied":
                self.event("draft.approve_denied", draft.id)
            return
        assert expected in ("first", "approved"), f"approved ({outcome.message}), model expected {expected}"
        assert outcome.final == (expected == "approved")
        self._apply_approval(draft, user, body, edit_amount, final=outcome.final)

    def _expected_approval(
        self, draft: MDraft, user: str, version: int, body: str | None, edit_amount: Decimal | None
    ) -> str:
        """What the use-case must do: approved, first (of two), denied (audited) or refused: why."""
        if version != draft.version:
            return "refused: stale message"
        if user in ("U0GONE", "U0GUEST") or user not in REVIEWERS[draft.category]:
            return "denied"
        if user == draft.requested_by:
            return "denied"
        if draft.status != "pending":
            return "refused: already decided"
        if draft.expires_at <= self.now:
            return "refused: overdue"
        if self.blocked(draft):
            return "refused: paused or manual"
        amount = draft.amount if edit_amount is None else minor(edit_amount)
        if edit_amount is not None and minor(edit_amount) > MAX_AMOUNT:
            return "refused: edited amount over the limit"
        needs_two = draft.approvals_needed == 2 or (amount or 0) > TWO_PERSON_ABOVE
        if needs_two and draft.first_approver is None:
            return "first"
        if needs_two and draft.first_approver == user:
            return "refused: same person twice"
        if (
            needs_two
            and SECOND_EDIT_RESTARTS_APPROVAL
            and (body or draft.body, amount) != (draft.body, draft.amount)
        ):
            return "first"  # the editor's approval is the first one on the new version
        fits = all(
            self.fits(self.usage.get((scope, local_day(self.now)), [0, 0]), limits, amount or 0)
            for scope, limits in self.scopes(draft)
        )
        return "approved" if fits else "refused: over a cap"

    def _apply_approval(
        self, draft: MDraft, user: str, body: str | None, edit_amount: Decimal | None, *, final: bool
    ) -> None:
        amount = draft.amount if edit_amount is None else minor(edit_amount)
        if not final:
            if (body or draft.body, amount) != (draft.body, draft.amount):
                draft.version += 1
            draft.first_approver = user
            draft.approvals_needed = 2
            draft.amount = amount
            draft.body = body or draft.body
            self.event("draft.first_approval", draft.id)
            return
        draft.amount = amount
        day = local_day(self.now)
        assert self.try_reserve(draft, amount, day)
        draft.reservation_day = day
        draft.decided_by, draft.decided_at = user, self.now
        if draft.category == "refund":
            draft.executor_jobs += 1
        self.changed(draft, "approved", "draft.approved")

    @precondition(lambda self: self.drafts)
    @rule(
        index=st.integers(0, 50),
        user=st.sampled_from(("U0ALICE", "U0BOB", "U0ADMIN", "U0CAROL", "U0OUT", "U0GUEST")),
        stale=st.sampled_from((False, False, False, True)),
    )
    def reject(self, index: int, user: str, stale: bool) -> None:
        """A reviewer (or not) rejects with a reason; the requester may reject."""
        self.tick()
        draft = self.pick(index, "pending") if index % 4 else self.pick(index)
        if draft is None:
            return
        version = draft.version + (1 if stale else 0)
        if version != draft.version:
            expected = "refused"
        elif user in ("U0GONE", "U0GUEST") or user not in REVIEWERS[draft.category]:
            expected = "denied"  # the requester may reject: only approving is barred
        else:
            expected = "rejected" if draft.status == "pending" else "refused"
        observe(f"reject: {expected}")
        try:
            decisions.reject(
                self.rt,
                draft_id=draft.id,
                version=version,
                user=user,
                reviewers=REVIEWERS[draft.category],
                reviewer=self.reviewer(user),
                reason="wrong order",
            )
        except DecisionRefused:
            assert expected != "rejected"
            if expected == "denied":
                self.event("draft.reject_denied", draft.id)
            return
        assert expected == "rejected"
        draft.decided_by, draft.decided_at = user, self.now
        self.changed(draft, "rejected", "draft.rejected")
        self._rejection_breaker(draft.agent)

    def _rejection_breaker(self, agent: str) -> None:
        """The automatic brake (bot/watchdogs.py) with the default [agents] tuning."""
        if self.paused[agent]:
            return
        decided = [
            d for d in self.drafts.values() if d.agent == agent and d.status in DECIDED and d.decided_at
        ]
        recent = sorted(decided, key=lambda d: d.decided_at or self.now, reverse=True)[:BREAKER_WINDOW]
        rejected = [d for d in recent if d.status == "rejected"]
        burst = [d for d in rejected if d.decided_at and d.decided_at >= self.now - BREAKER_BURST_WINDOW]
        ratio = len(recent) >= BREAKER_WINDOW and len(rejected) >= Decimal("0.30") * len(recent)
        if ratio or len(burst) >= BREAKER_BURST:
            observe("rejection breaker paused an agent")
            self.set_paused(agent, True)
            self.event("agent.paused", f"agent:{agent}")

    @precondition(
        lambda self: any(d.status in ("failed", "needs_reconciliation") for d in self.drafts.values())
    )
    @rule(index=st.integers(0, 50), user=st.sampled_from(("U0ALICE", "U0BOB", "U0ADMIN", "U0OUT")))
    def retry(self, index: int, user: str) -> None:
        self.tick()
        draft = self.pick(index, "failed", "needs_reconciliation")
        assert draft is not None
        day = local_day(self.now)
        if user not in REVIEWERS[draft.category] or user == draft.requested_by:
            expected = "denied"
        elif draft.category != "refund" or self.blocked(draft):
            expected = "refused"  # nothing to retry without an executor
        elif draft.status == "failed" and not self.try_reserve(draft, draft.amount, day):
            expected = "refused"
        else:
            expected = "retried"
        try:
            decisions.retry(
                self.rt,
                draft_id=draft.id,
                version=draft.version,
                user=user,
                reviewers=REVIEWERS[draft.category],
                reviewer=self.reviewer(user),
            )
        except DecisionRefused:
            assert expected != "retried"
            if expected == "denied":
                self.event("draft.retry_denied", draft.id)
            return
        assert expected == "retried"
        observe(f"retry from {draft.status}")
        if draft.status == "failed":
            draft.reservation_day = day
        draft.executor_jobs += 1
        self.changed(draft, "approved", "draft.retry")

    @precondition(lambda self: self.drafts)
    @rule(index=st.integers(0, 50), outcome=st.sampled_from(("ok", "ok", "failed", "unknown")))
    def action_outcome(self, index: int, outcome: str) -> None:
        """An approved action is carried out: by the executor for refunds, by the agent for replies."""
        self.tick()
        approved = self.pick(index, "approved")
        draft = approved if approved is not None and index % 4 else self.pick(index)
        assert draft is not None
        if draft.category == "reply":
            self.agent_reports_done(draft, ok=outcome == "ok")
        else:
            self.executor_answers(draft, outcome)

    def executor_answers(self, draft: MDraft, outcome: str) -> None:
        """The outbox worker's attempt: the same gate (`_begin`), then the recorded answer."""
        jobs = WebhookJobs(self.rt)
        if draft.status == "approved" and self.blocked(draft):
            with pytest.raises(NotAttempted):  # held: nothing sent, no attempt counted
                jobs._begin(draft.id)
            return
        attempt = jobs._begin(draft.id)
        if draft.status != "approved":
            assert attempt is None
            return
        assert attempt is not None and attempt.draft_id == draft.id
        observe(f"executor: {outcome}")
        draft.attempts += 1
        if outcome == "ok":
            jobs._finish(draft.id, ok=True, error=None)
            self.executor_failures = 0
            self.changed(draft, "executed", "draft.executed")
            return
        unknown = outcome == "unknown"
        if unknown:  # an earlier attempt was sent and never answered (what WebhookJobs._note records)
            with transaction(self.rt.engine) as session:
                queries.update_draft(
                    session, draft.id, where={"status": "approved"}, execution_ambiguous=True
                )
        jobs._finish(draft.id, ok=False, error="HTTP 500: down")
        # An unknown outcome's unanswered attempts are counted as they happen (not modelled here).
        self.executor_failures += 0 if unknown else 1
        if not unknown and self._executor_breaker_trips():
            observe("executor breaker switched refund to manual")
            self.set_mode("refund", {"mode": "manual", "until": None})
            self.event("category.manual", "category:refund")
        if unknown:
            self.changed(draft, "needs_reconciliation", "draft.needs_reconciliation")
        else:
            self.release(draft)
            self.changed(draft, "failed", "draft.failed")

    def _executor_breaker_trips(self) -> bool:
        mode = self.modes["refund"]
        if not BREAKER_TRIPS_AGAIN:
            return self.executor_failures == BREAKER_THRESHOLD and mode is None
        if self.executor_failures < BREAKER_THRESHOLD or (mode is not None and mode["until"] is None):
            return False
        self.executor_failures = 0
        return True

    def agent_reports_done(self, draft: MDraft, ok: bool) -> None:
        """For a category without an executor the agent acts, then reports what happened."""
        agent = self.agents[draft.agent]
        if draft.status != "approved":
            with pytest.raises(Conflict):
                drafts.report_done(self.rt, agent=agent, draft_id=draft.id, done=DoneIn(ok=ok))
            return
        view = drafts.report_done(self.rt, agent=agent, draft_id=draft.id, done=DoneIn(ok=ok))
        draft.attempts += 1
        if ok:
            self.changed(draft, "executed", "draft.executed")
        else:
            self.release(draft)
            self.changed(draft, "failed", "draft.failed")
        assert view["status"] == draft.status

    @precondition(lambda self: self.drafts)
    @rule(index=st.integers(0, 50), own=st.sampled_from((True, True, False)))
    def withdraw(self, index: int, own: bool) -> None:
        self.tick()
        draft = self.pick(index, "pending") if index % 3 else self.pick(index)
        if draft is None:
            return
        caller = draft.agent if own else next(a for a in AGENTS if a != draft.agent)
        if not own:
            with pytest.raises(NotFound):  # another agent's draft does not exist for it
                drafts.cancel(self.rt, agent=self.agents[caller], draft_id=draft.id)
            return
        if draft.status != "pending":
            with pytest.raises(Conflict):
                drafts.cancel(self.rt, agent=self.agents[caller], draft_id=draft.id)
            return
        view = drafts.cancel(self.rt, agent=self.agents[caller], draft_id=draft.id)
        assert view["status"] == "cancelled"
        self.changed(draft, "cancelled", "draft.cancelled")

    @rule(step=st.sampled_from(STEPS), restart=st.sampled_from((False, False, False, True)))
    def time_passes(self, step: timedelta, restart: bool) -> None:
        """The clock moves on (maybe across midnight or the DST change), the server maybe restarts,
        and its periodic jobs run: expiry, then the end of time-boxed manual modes."""
        self.clock.advance(seconds=step.total_seconds())
        if restart:  # a new process: nothing but the database carries over
            self.engine.dispose()
            if self.HOME is not None:
                self.engine = self.HOME.restarted(self.engine)
            else:
                self.engine = create_db_engine(self.settings.database_url, pool_size=2)
            self.rt = self._runtime()
        self.tick()
        due = [d for d in self.drafts.values() if d.status == "pending" and d.expires_at <= self.now]
        assert decisions.expire_due(self.rt) == len(due)
        for draft in due:
            draft.decided_at = self.now
            self.changed(draft, "expired", "draft.expired")
        lapsed = [c for c in CATEGORIES if (self.modes[c] or {}).get("until") and not self.manual(c)]
        assert self.control().revert_lapsed() == len(lapsed)
        for category in lapsed:
            self.set_mode(category, None)
            self.event("category.review", f"category:{category}")

    def control(self) -> Control:
        return Control(self.rt, directory=None)  # type: ignore[arg-type]  # not needed by these methods

    @rule(switch=st.sampled_from(SWITCHES))
    def slash_command(self, switch: tuple[Any, ...]) -> None:
        """`/agent pause|resume|manual|review|cap`, as acknowledged to an authorized user."""
        self.tick()
        verb, *args = switch
        getattr(self, f"_{verb}")(*args)

    def _pause(self, who: str, user: str) -> None:
        # Pausing what is paused already changes nothing: no second audit event, the first pause stays.
        self.control().pause(user, [who, "looks", "wrong"])
        if who == "all":
            if self.pause_all:
                return
            self.set_pause_all(True)
        else:
            if self.paused[who]:
                return
            self.set_paused(who, True)
        self.event("agent.paused", f"agent:{who}")

    def _resume(self, who: str) -> None:
        self.control().resume("U0ADMIN", [who])
        if who == "all":  # lifts the pause of all only; each agent's own pause stays
            if not self.pause_all:
                return
            self.set_pause_all(False)
        else:
            if not self.paused[who]:  # nothing to resume: nothing changes
                return
            self.set_paused(who, False)
        self.event("agent.resumed", f"agent:{who}")

    def _manual(self, category: str, duration: timedelta | None) -> None:
        words = [] if duration is None else [f"{int(duration.total_seconds() // 60)}m"]
        until = None if duration is None else self.now + duration
        if self.manual(category):  # U0BOB is no admin: he may lengthen manual mode, not shorten it
            current = self.modes[category]["until"]  # type: ignore[index]
            if until is not None and (current is None or until < current):
                with pytest.raises(Refused, match="only admins can shorten it"):
                    self.control().manual("U0BOB", [category, *words])
                return
        self.control().manual("U0BOB", [category, *words])
        self.set_mode(category, {"mode": "manual", "until": until})
        self.event("category.manual", f"category:{category}")

    def _review(self, category: str) -> None:
        self.control().review("U0ADMIN", [category])
        if self.modes[category] is not None:  # in review mode already: nothing changes or is audited
            self.set_mode(category, None)
            self.event("category.review", f"category:{category}")

    def _cap(self, category: str, count: int | None, amount: str | None) -> None:
        args = [category]
        change: dict[str, int] = {}
        if count is not None:
            args.append(f"count={count}")
            change["count_cap"] = count
        if amount is not None:
            args.append(f"amount={amount}")
            change["amount_cap_minor"] = minor(amount)
        self.control().set_cap("U0ADMIN", args)
        today = local_day(self.now)
        day, before = self.cap_override[category]
        self.cap_override[category] = (today, (before if day == today else {}) | change)
        self.event("category.cap", f"category:{category}")

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        with self.engine.connect() as conn:  # one snapshot for every check below
            rows = {row.id: row for row in conn.execute(DRAFTS)}
            usage = {
                (row.scope, row.day): [row.count_used, row.amount_used_minor]
                for row in conn.execute(CAP_USAGE)
            }
            jobs: dict[str, int] = {}
            for (payload,) in conn.execute(EXECUTOR_JOBS):
                draft_id = json.loads(payload)["draft_id"]
                jobs[draft_id] = jobs.get(draft_id, 0) + 1
            audit_tail = conn.execute(AUDIT_FROM, {"seq": self.chain_head[0]}).all()
        assert set(rows) == set(self.drafts)
        for draft_id, model in self.drafts.items():
            row = rows[draft_id]
            seen = (
                row.status,
                row.version,
                row.amount_minor,
                row.body,
                row.first_approver,
                row.approvals_needed,
            )
            want = (
                model.status,
                model.version,
                model.amount,
                model.body,
                model.first_approver,
                model.approvals_needed,
            )
            assert seen == want, f"{draft_id}: database {seen} != model {want}"
            if model.status in (*HELD, "failed"):
                assert row.reservation_day == model.reservation_day, draft_id
                assert (row.decided_by, row.decided_at) == (model.decided_by, model.decided_at), draft_id
            assert row.execution_attempts == model.attempts, draft_id
            assert jobs.get(draft_id, 0) == model.executor_jobs, f"{draft_id}: executor jobs"
            self._check_decision(row)
        self._check_caps(rows, usage)
        self._check_audit_log(audit_tail)

    def _check_decision(self, row: Any) -> None:
        if row.status not in ("approved", "executed", "failed", "needs_reconciliation"):
            return
        reviewers = REVIEWERS[row.category] - {"U0GUEST", "U0GONE"}
        approvers = [row.decided_by] if row.approvals_needed == 1 else [row.first_approver, row.decided_by]
        assert all(a in reviewers for a in approvers), f"{row.id}: approved by {approvers}"
        assert row.requested_by not in approvers, f"{row.id}: the requester approved"
        assert len(set(approvers)) == len(approvers), f"{row.id}: one person gave both approvals"
        if row.amount_minor is not None and row.amount_minor > TWO_PERSON_ABOVE:
            assert row.approvals_needed == 2, f"{row.id}: above the two-person threshold with one approver"
        # Never approved, nor executed, while the agent was paused or the category manual.
        moments = [("approved", row.decided_at)]
        if row.status == "executed" and row.category == "refund":
            moments.append(("executed", row.updated_at))
        agent = next(name for name, a in self.agents.items() if a.id == row.agent_id)
        for what, at in moments:
            assert not self.timeline.value(f"paused:{agent}", at), f"{row.id} {what} while {agent} was paused"
            assert not self.timeline.value("pause:all", at), f"{row.id} {what} while everything was paused"
            assert not self.manual(row.category, at), f"{row.id} {what} while {row.category} was manual"

    def _check_caps(self, rows: dict[str, Any], usage: dict[tuple[str, str], list[int]]) -> None:
        held: dict[tuple[str, str], list[int]] = {}
        for model in self.drafts.values():
            if model.status in HELD:
                for scope, _ in self.scopes(model):
                    used = held.setdefault((scope, model.reservation_day or "?"), [0, 0])
                    used[0] += 1
                    used[1] += model.amount or 0
        for key in set(usage) | set(held):
            assert usage.get(key, [0, 0]) == held.get(key, [0, 0]), f"cap usage {key}"
            assert usage.get(key, [0, 0]) == self.usage.get(key, [0, 0]), f"cap usage {key} vs model"
            count_cap, amount_cap = self.bound.get(key, (None, None))
            count, amount = usage.get(key, [0, 0])
            assert count_cap is None or count <= count_cap, f"{key}: count {count} over cap {count_cap}"
            assert amount_cap is None or amount <= amount_cap, f"{key}: amount {amount} over cap {amount_cap}"

    def _check_audit_log(self, tail: Sequence[Any]) -> None:
        """The rows from the head checked at the last step on: that head still there unchanged, then
        the expected events, each chained onto the one before (hashed by `audit.row_hash`, as
        `audit.verify` does); and no row missing or extra in the whole log."""
        seq, prev_hash = self.chain_head
        assert tail, f"audit row {seq} is gone" if seq else "the audit log is empty"
        count = tail[0].rows
        if seq:
            assert (tail[0].seq, tail[0].hash) == (seq, prev_hash), f"audit row {seq} changed"
            tail = tail[1:]
        for row in tail:
            seq += 1
            assert row.seq == seq, f"audit row {seq} is missing"
            assert row.prev_hash == prev_hash, f"audit row {seq}: prev_hash does not match the row before"
            assert audit.stored_row_hash(row) == row.hash, f"audit row {seq}: content does not match its hash"
            assert seq <= len(self.audit), f"audit row {seq} is not expected: {row.action} {row.subject}"
            assert (row.action, row.subject) == self.audit[seq - 1], (
                f"audit row {seq} is not the expected event"
            )
            prev_hash = row.hash
        assert count == seq == len(self.audit), "the audit log differs from the expected events"
        self.chain_head = (seq, prev_hash)

    def whole_audit_log_verifies(self) -> None:
        """End to end: `audit.verify` over the whole chain, which ends at the head checked last,
        and the whole log (rows checked at earlier steps too) is the expected events."""
        result = audit.verify(self.engine)
        assert result.ok, result
        assert (result.rows, result.head_seq, result.head_hash) == (len(self.audit), *self.chain_head), result
        with self.engine.connect() as conn:
            trail = [(row.action, row.subject) for row in conn.execute(AUDIT_TRAIL)]
        assert trail == self.audit, "the audit log differs from the expected events"


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
def test_review_loop_matches_its_model(db_kind: str, request: pytest.FixtureRequest) -> None:
    home = request.getfixturevalue("sqlite_home") if db_kind == "sqlite" else None
    machine = type(f"ReviewLoop_{db_kind}", (ReviewLoop,), {"HOME": home})
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=max_examples(db_kind)))


def test_local_day_model_matches_the_dst_calendar() -> None:
    """The model's own day key: 2026-11-01 in New York is 25 hours long."""
    assert local_day(datetime(2026, 11, 1, 3, 59, tzinfo=UTC)) == "2026-10-31"
    assert local_day(datetime(2026, 11, 1, 4, 0, tzinfo=UTC)) == "2026-11-01"
    assert local_day(datetime(2026, 11, 2, 4, 59, tzinfo=UTC)) == "2026-11-01"
    assert local_day(datetime(2026, 11, 2, 5, 0, tzinfo=UTC)) == "2026-11-02"
    assert date.fromisoformat(local_day(DST_END)) == date(2026, 11, 1)


# -- Gaps the model found in an earlier session, fixed since; each test states the rule it broke.


def _refund(rt: Runtime, amount: str) -> str:
    agent = agents.authenticate(rt, agents.rotate(rt, name="support-bot"))
    draft_in = DraftIn.model_validate(
        {
            "category": "refund",
            "summary": "Refund",
            "body": "We refunded the order to your original payment method.",
            "context": f"Customer: please refund my order of ${amount}.",
            "amount": amount,
        }
    )
    _, created = intake.submit(rt, agent=agent, draft=draft_in, key=None, base_url="")
    return str(created["id"])


def _approve(rt: Runtime, draft_id: str, user: str, **edits: Any) -> decisions.Outcome:
    with rt.engine.connect() as conn:
        version = conn.execute(sa.select(col(Draft.version)).where(col(Draft.id) == draft_id)).scalar_one()
    return decisions.approve(
        rt,
        draft_id=draft_id,
        version=version,
        user=user,
        reviewers=REVIEWERS["refund"],
        reviewer=policy.Reviewer(user),
        **edits,
    )


def _status(rt: Runtime, draft_id: str) -> str:
    with rt.engine.connect() as conn:
        return str(conn.execute(sa.select(col(Draft.status)).where(col(Draft.id) == draft_id)).scalar_one())


@pytest.mark.parametrize("edits", [{"edited_amount": Decimal("290.00")}, {"edited_body": "Changed."}])
def test_an_edit_by_the_second_approver_needs_another_approval(rt: Runtime, edits: dict[str, Any]) -> None:
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    draft_id = _refund(rt, "250.00")
    assert not _approve(rt, draft_id, "U0ALICE").final  # first of two, on 250.00 as submitted
    with contextlib.suppress(DecisionRefused):  # refusing the edit is one acceptable fix
        _approve(rt, draft_id, "U0BOB", **edits)
    # Nobody but Bob has seen the edited version: it must not be approved yet.
    assert _status(rt, draft_id) != "approved"


def test_executor_breaker_trips_again_after_an_admin_returns_the_category(rt: Runtime) -> None:
    agents.add(rt, name="support-bot", categories=["refund"], callback_prefixes=[])
    jobs = WebhookJobs(rt)
    control = Control(rt, directory=None)  # type: ignore[arg-type]

    def fail_one() -> None:
        draft_id = _refund(rt, "30.00")
        assert _approve(rt, draft_id, "U0ALICE").final
        assert jobs._begin(draft_id) is not None
        jobs._finish(draft_id, ok=False, error="HTTP 500: down")

    for _ in range(BREAKER_THRESHOLD):
        fail_one()
    with rt.engine.connect() as conn:
        assert "mode:refund" in {k for (k,) in conn.execute(sa.text("SELECT key FROM control_state"))}
    control.review("U0ADMIN", ["refund"])  # the admin believes the executor is fixed; it is not
    for _ in range(BREAKER_THRESHOLD):
        fail_one()
    with rt.engine.connect() as conn:
        keys = {k for (k,) in conn.execute(sa.text("SELECT key FROM control_state"))}
    assert "mode:refund" in keys, "five more consecutive failures must switch refund to manual again"
