"""Audited changes take the audit chain's lock before they write any row (storage/db.py,
`transaction(audited=True)`), so two processes deciding the same drafts at once never deadlock:
before, on PostgreSQL, a reject (draft row first, chain lock later) racing an approval (chain lock
first, then the draft row) deadlocked in most trials (reliability check AC-05)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bot import agents, audit, decisions, intake, policy
from bot.errors import DecisionRefused
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.settings import load_settings
from storage.db import create_db_engine
from tests.conftest import make_env, write_config

REVIEWERS = frozenset({"U0ALICE", "U0BOB"})
TRIALS = 25


def _act(env: dict[str, str], role: str, ids: list[str], barrier: Any, answers: Any) -> None:
    """One racing process: for each draft, at the same moment as the other process, approve it,
    edit and approve it, reject it, or switch its category to manual (and back to review after the
    trial)."""
    from bot.control import Control

    settings = load_settings(env)
    rt = Runtime(engine=create_db_engine(settings.database_url), config=settings.config)
    control = Control(rt=rt, directory=None)  # type: ignore[arg-type]  # manual and review read no directory
    out = []
    for draft_id in ids:
        barrier.wait()  # both processes act on this draft at the same moment
        try:
            if role in ("approve", "edit"):
                user = "U0ALICE" if role == "approve" else "U0BOB"
                decisions.approve(
                    rt,
                    draft_id=draft_id,
                    version=1,
                    user=user,
                    reviewers=REVIEWERS,
                    reviewer=policy.Reviewer(user),
                    edited_body="It ships on Tuesday." if role == "edit" else None,
                )
            elif role == "reject":
                decisions.reject(
                    rt,
                    draft_id=draft_id,
                    version=1,
                    user="U0BOB",
                    reviewers=REVIEWERS,
                    reviewer=policy.Reviewer("U0BOB"),
                    reason="not this one",
                )
            else:
                control.manual("U0BOB", ["reply"])
            out.append("won")
        except DecisionRefused:
            out.append("refused")
        except Exception as exc:  # a deadlock surfaces here
            out.append(f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        barrier.wait()
        if role == "manual":
            control.review("U0ADMIN", ["reply"])  # back to review before the next trial
        barrier.wait()
    answers.put((role, out))
    rt.engine.dispose()


def _drafts(rt: Runtime, count: int) -> list[str]:
    """`count` pending drafts, submitted on the wall clock the racing processes decide by: with the
    fixture's frozen clock (a fixed day) they would have expired a day later, and every approval
    would be refused as expired."""
    rt = Runtime(engine=rt.engine, config=rt.config)
    agents.add(rt, name="race-bot", categories=["reply"], callback_prefixes=[])
    agent = agents.authenticate(rt, agents.rotate(rt, name="race-bot"))
    draft = DraftIn.model_validate({"category": "reply", "summary": "s", "body": "It ships on Monday."})
    return [
        str(intake.submit(rt, agent=agent, draft=draft, key=None, base_url="")[1]["id"]) for _ in range(count)
    ]


def _race(env: dict[str, str], ids: list[str], roles: tuple[str, str]) -> dict[str, list[str]]:
    """Run the two roles in two OS processes, draft by draft; each role's answers, in order."""
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_act, args=(env, role, ids, barrier, answers)) for role in roles]
    for process in processes:
        process.start()
    results = dict(answers.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    return results


def test_approve_and_reject_racing_from_two_processes_never_deadlock(
    db_url: str, tmp_path: Path, rt: Runtime
) -> None:
    ids = _drafts(rt, TRIALS)
    results = _race(make_env(db_url, write_config(tmp_path)), ids, ("approve", "reject"))

    errors = [a for a in results["approve"] + results["reject"] if a.startswith("error")]
    assert errors == [], errors
    with rt.engine.connect() as conn:
        status: dict[str, str] = dict(conn.execute(sa.text("SELECT id, status FROM draft")).all())
    for n, draft_id in enumerate(ids):
        approved, rejected = results["approve"][n] == "won", results["reject"][n] == "won"
        assert approved != rejected, (draft_id, results["approve"][n], results["reject"][n])
        assert status[draft_id] == ("approved" if approved else "rejected")
    assert audit.verify(rt.engine).ok


def _write_switch(url: str, writer: int, barrier: Any, answers: Any) -> None:
    from datetime import UTC, datetime

    from storage import queries
    from storage.db import transaction

    engine = create_db_engine(url)
    errors = []
    for n in range(20):
        barrier.wait()
        try:
            with transaction(engine) as session:
                queries.set_control(
                    session, "pause:all", {"n": n, "writer": writer}, by="t", at=datetime.now(UTC)
                )
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    answers.put(errors)
    engine.dispose()


def test_four_processes_writing_one_switch_at_once_never_collide(db_url: str, rt: Runtime) -> None:
    # Before, a switch was written as DELETE then INSERT: two writers at once broke its primary key.
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_write_switch, args=(db_url, n, barrier, answers)) for n in range(4)]
    for process in processes:
        process.start()
    errors = [e for _ in processes for e in answers.get(timeout=120)]
    for process in processes:
        process.join(timeout=30)
    assert errors == []
    with rt.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT value FROM control_state WHERE \"key\" = 'pause:all'")).all()
    assert len(rows) == 1 and '"n": 19' in rows[0][0]


def test_an_approval_racing_a_switch_to_manual_commits_before_it_or_not_at_all(
    db_url: str, tmp_path: Path, rt: Runtime
) -> None:
    ids = _drafts(rt, 20)
    results = _race(make_env(db_url, write_config(tmp_path)), ids, ("approve", "manual"))

    assert [a for a in results["approve"] + results["manual"] if a.startswith("error")] == []
    assert results["manual"] == ["won"] * len(ids)
    with rt.engine.connect() as conn:
        events = conn.execute(
            sa.text(
                "SELECT action, subject, seq FROM audit_event"
                " WHERE action IN ('draft.approved', 'category.manual') ORDER BY seq"
            )
        ).all()
    switches = [seq for action, _, seq in events if action == "category.manual"]
    approved = {subject: seq for action, subject, seq in events if action == "draft.approved"}
    for n, draft_id in enumerate(ids):
        if results["approve"][n] == "won":
            # Serialized: an approval its reviewer was told about committed before that trial's switch.
            assert approved[draft_id] < switches[n], (draft_id, approved[draft_id], switches[n])
        else:
            assert draft_id not in approved
    assert audit.verify(rt.engine).ok


def test_an_edit_racing_an_approval_decides_each_draft_once(db_url: str, tmp_path: Path, rt: Runtime) -> None:
    # AC-05's "edit vs approve": Bob's edited version and Alice's approval of version 1 arrive at
    # once. One of them decides the draft; the other is told it was already decided; the approved
    # text is exactly the winner's, and the edit's diff is posted only when the edit won.
    ids = _drafts(rt, 20)
    results = _race(make_env(db_url, write_config(tmp_path)), ids, ("approve", "edit"))

    assert [a for a in results["approve"] + results["edit"] if a not in ("won", "refused")] == []
    for n in range(len(ids)):
        assert sorted((results["approve"][n], results["edit"][n])) == ["refused", "won"], n
    with rt.engine.connect() as conn:
        drafts: dict[str, str] = dict(conn.execute(sa.text("SELECT id, status FROM draft")).all())
        bodies = {
            row[0]: row[1]
            for row in conn.execute(sa.text("SELECT id, coalesce(approved_body, body) FROM draft")).all()
        }
        approved = conn.execute(
            sa.text("SELECT subject, actor FROM audit_event WHERE action = 'draft.approved'")
        ).all()
        diffs = [
            json.loads(row[0])["draft_id"]
            for row in conn.execute(
                sa.text("SELECT payload FROM outbox_job WHERE kind = 'slack.thread'")
            ).all()
        ]
    assert set(drafts.values()) == {"approved"}
    assert sorted(subject for subject, _ in approved) == sorted(ids)  # one approval event per draft
    winners: dict[str, str] = dict(approved)
    for n, draft_id in enumerate(ids):
        edit_won = results["edit"][n] == "won"
        assert winners[draft_id] == ("slack:U0BOB" if edit_won else "slack:U0ALICE")
        assert bodies[draft_id] == ("It ships on Tuesday." if edit_won else "It ships on Monday.")
    # The edit's diff is posted in the draft's thread only where the edit won, once.
    assert sorted(diffs) == sorted(draft_id for n, draft_id in enumerate(ids) if results["edit"][n] == "won")
    assert audit.verify(rt.engine).ok
