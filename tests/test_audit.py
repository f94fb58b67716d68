from __future__ import annotations

import csv
import io
import itertools
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot import audit
from storage import migrate
from storage.db import create_db_engine, transaction
from storage.tables import AuditEvent, AuditHead

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 11, 20, 14, 30, 15, 123456, tzinfo=UTC)
audit_t = AuditEvent.__table__  # type: ignore[attr-defined]
head_t = AuditHead.__table__  # type: ignore[attr-defined]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def append_events(engine: Engine, count: int, *, start: datetime = START, actor: str = "U0ALICE") -> None:
    for i in range(count):
        with transaction(engine, audited=True) as session:
            audit.append(
                session,
                at=start + timedelta(minutes=i),
                actor=actor,
                action="draft.approved",
                subject=f"d_{i}",
                before={"status": "pending"},
                after={"status": "approved", "amount": "30.00", "note": "ünïcode ✅"},
            )


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(audit_t).order_by(audit_t.c.seq))]


def tamper(engine: Engine, statement: sa.Executable) -> None:
    with engine.begin() as conn:
        conn.execute(statement)


def test_append_links_each_row_to_the_hash_of_the_one_before(engine: Engine) -> None:
    append_events(engine, 5)
    chain = rows(engine)
    assert [row["seq"] for row in chain] == [1, 2, 3, 4, 5]
    assert chain[0]["prev_hash"] == audit.GENESIS
    for before, after in itertools.pairwise(chain):
        assert after["prev_hash"] == before["hash"]
    result = audit.verify(engine)
    assert result == audit.Verification(True, 5, 5, chain[-1]["hash"])


def test_append_stores_aware_utc_times_and_canonical_json(engine: Engine) -> None:
    append_events(engine, 1)
    with transaction(engine) as session:
        event = session.get(AuditEvent, 1)
        assert event is not None
        assert event.at == START and event.at.tzinfo is not None
        assert event.before == '{"status":"pending"}'
        assert json.loads(event.after) == {"status": "approved", "amount": "30.00", "note": "ünïcode ✅"}
        assert audit.head(session) == (1, event.hash)


def test_verify_passes_when_the_log_is_empty(engine: Engine) -> None:
    assert audit.verify(engine) == audit.Verification(True, 0, 0, audit.GENESIS)


def test_append_leaves_no_row_when_the_callers_transaction_rolls_back(engine: Engine) -> None:
    append_events(engine, 2)
    with pytest.raises(RuntimeError), transaction(engine, audited=True) as session:
        audit.append(session, at=START, actor="U0BOB", action="draft.rejected", subject="d_x")
        raise RuntimeError("the state change failed")
    append_events(engine, 1, actor="U0CAROL")
    assert [row["actor"] for row in rows(engine)] == ["U0ALICE", "U0ALICE", "U0CAROL"]
    assert audit.verify(engine).ok


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "U0MALLORY"),
        ("action", "draft.rejected"),
        ("subject", "d_other"),
        ("before", '{"status":"approved"}'),
        ("after", '{"amount":"3000.00","note":"ünïcode ✅","status":"approved"}'),
        ("outcome", "denied"),
        ("at", START + timedelta(days=1)),
        ("prev_hash", "f" * 64),
        ("hash", "e" * 64),
    ],
)
def test_verify_names_the_row_when_one_field_was_edited(engine: Engine, column: str, value: Any) -> None:
    append_events(engine, 5)
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == 3).values({column: value}))
    result = audit.verify(engine)
    assert not result.ok
    assert result.bad_seq == 3
    assert result.head_seq == 2


def test_verify_names_the_next_row_when_an_edited_row_had_its_hash_recomputed(engine: Engine) -> None:
    append_events(engine, 5)
    row = rows(engine)[2]
    forged = row | {"actor": "U0MALLORY"}
    forged_hash = audit.row_hash(**{k: forged[k] for k in audit.EXPORT_FIELDS if k != "hash"})
    tamper(
        engine,
        sa.update(audit_t).where(audit_t.c.seq == 3).values(actor="U0MALLORY", hash=forged_hash),
    )
    result = audit.verify(engine)
    assert not result.ok
    assert result.bad_seq == 4
    assert result.problem == "prev_hash does not match the row before"


@pytest.mark.parametrize("seq", [1, 3])
def test_verify_names_the_gap_when_a_row_was_deleted(engine: Engine, seq: int) -> None:
    append_events(engine, 5)
    tamper(engine, sa.delete(audit_t).where(audit_t.c.seq == seq))
    result = audit.verify(engine)
    assert not result.ok
    assert result.bad_seq == seq + 1
    assert result.problem == f"row {seq} is missing"


@pytest.mark.parametrize("first_deleted", [5, 4, 1])
def test_the_recorded_head_catches_the_newest_rows_deleted(engine: Engine, first_deleted: int) -> None:
    append_events(engine, 5)
    tamper(engine, sa.delete(audit_t).where(audit_t.c.seq >= first_deleted))
    result = audit.verify(engine)
    assert not result.ok
    assert result.problem == f"rows {first_deleted}..5 are missing: the log's recorded head (#5) is gone"


def test_the_recorded_head_catches_the_newest_row_rewritten_with_its_hash_recomputed(engine: Engine) -> None:
    append_events(engine, 3)
    [last] = [row for row in rows(engine) if row["seq"] == 3]
    forged = audit.row_hash(
        seq=3,
        at=last["at"],
        actor="U0MALLORY",
        action=last["action"],
        subject=last["subject"],
        before=last["before"],
        after=last["after"],
        outcome=last["outcome"],
        prev_hash=last["prev_hash"],
    )
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == 3).values(actor="U0MALLORY", hash=forged))
    result = audit.verify(engine)
    assert (result.ok, result.bad_seq, result.problem) == (
        False,
        3,
        "row differs from the log's recorded head",
    )


def test_verify_fails_when_the_recorded_head_itself_is_gone(engine: Engine) -> None:
    append_events(engine, 2)
    tamper(engine, sa.delete(head_t))
    assert audit.verify(engine).problem == "the recorded head (table audit_head) is missing"


def test_a_published_head_catches_the_newest_rows_deleted_when_the_recorded_head_was_rewritten_too(
    engine: Engine,
) -> None:
    append_events(engine, 5)
    published = audit.verify(engine)  # the digest prints this head
    witness = (published.head_seq, published.head_hash)
    assert audit.verify(engine, witness=witness).ok
    append_events(engine, 1, actor="U0CAROL")  # later rows are fine
    assert audit.verify(engine, witness=witness).ok
    third = next(row for row in rows(engine) if row["seq"] == 3)
    tamper(engine, sa.delete(audit_t).where(audit_t.c.seq >= 4))
    tamper(engine, sa.update(head_t).values(seq=3, hash=third["hash"]))
    assert audit.verify(engine).ok  # the chain and a rewritten head alone cannot tell
    result = audit.verify(engine, witness=witness)
    assert not result.ok and result.problem == "rows 4..5 are missing: the published head (#5) is gone"
    assert not audit.verify(engine, witness=(3, "0" * 64)).ok  # a head that never was


def test_verify_catches_a_deleted_row_whose_successors_were_renumbered(engine: Engine) -> None:
    append_events(engine, 5)
    tamper(engine, sa.delete(audit_t).where(audit_t.c.seq == 3))
    for seq in (4, 5):
        tamper(engine, sa.update(audit_t).where(audit_t.c.seq == seq).values(seq=seq - 1))
    result = audit.verify(engine)
    assert not result.ok
    assert result.bad_seq == 3


def test_verify_catches_two_rows_whose_contents_were_swapped(engine: Engine) -> None:
    append_events(engine, 5)
    chain = rows(engine)
    content = [name for name in audit.EXPORT_FIELDS if name != "seq"]
    second, fourth = ({name: chain[i][name] for name in content} for i in (1, 3))
    # hash is UNIQUE: park one row's hash while the two trade places.
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == 2).values(hash="parked"))
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == 4).values(second))
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == 2).values(fourth))
    assert [row["subject"] for row in rows(engine)] == ["d_0", "d_3", "d_2", "d_1", "d_4"]
    result = audit.verify(engine)
    assert not result.ok
    assert result.bad_seq == 2


def test_verify_catches_two_rows_whose_sequence_numbers_were_swapped(engine: Engine) -> None:
    append_events(engine, 5)
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == 2).values(seq=-2))
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == 4).values(seq=2))
    tamper(engine, sa.update(audit_t).where(audit_t.c.seq == -2).values(seq=4))
    result = audit.verify(engine)
    assert not result.ok
    assert result.bad_seq == 2


def _append_from_another_process(url: str, actor: str, count: int, barrier: Any) -> None:
    engine = create_db_engine(url, pool_size=1)
    barrier.wait(timeout=60)
    for i in range(count):
        with transaction(engine, audited=True) as session:
            audit.append(
                session,
                at=datetime.now(UTC),
                actor=actor,
                action="test.appended",
                subject=f"{actor}:{i}",
                after={"i": i},
            )
    engine.dispose()


def test_eight_processes_appending_at_once_leave_one_valid_chain(engine: Engine, db_url: str) -> None:
    processes, per_process = 8, 25
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    workers = [
        ctx.Process(target=_append_from_another_process, args=(db_url, f"proc{n}", per_process, barrier))
        for n in range(processes)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert [worker.exitcode for worker in workers] == [0] * processes
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
    result = audit.verify(engine)
    assert result.ok, result.problem
    assert result.rows == processes * per_process
    chain = rows(engine)
    assert [row["seq"] for row in chain] == list(range(1, processes * per_process + 1))
    for n in range(processes):
        subjects = [row["subject"] for row in chain if row["actor"] == f"proc{n}"]
        assert subjects == [f"proc{n}:{i}" for i in range(per_process)]


def export(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Imported here, not at the top: the spawned appenders import this module, and conftest
    # pulls in the whole app, which would add a second to each process start.
    from tests.conftest import make_env, write_config

    env = {k: v for k, v in os.environ.items() if not k.startswith(("COUNTERSIGN_", "SLACK_"))}
    env |= make_env(db_url, write_config(tmp_path))
    return subprocess.run(
        [sys.executable, "-m", "bot", "audit", "export", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_export_writes_json_lines_since_the_given_date(engine: Engine, db_url: str, tmp_path: Path) -> None:
    append_events(engine, 3, start=datetime(2026, 11, 20, 23, 0, tzinfo=UTC))
    append_events(engine, 2, start=datetime(2026, 11, 22, 0, 0, tzinfo=UTC), actor="U0BOB")
    done = export(db_url, tmp_path, "--format", "jsonl", "--since", "2026-11-22")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    chain = rows(engine)
    assert [line["seq"] for line in lines] == [4, 5]
    assert [line["hash"] for line in lines] == [row["hash"] for row in chain[3:]]
    assert lines[0]["actor"] == "U0BOB"
    assert lines[0]["after"] == {"status": "approved", "amount": "30.00", "note": "ünïcode ✅"}
    assert datetime.fromisoformat(lines[0]["at"]) == datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    assert set(lines[0]) == set(audit.EXPORT_FIELDS)


def test_export_writes_every_row_as_csv_without_since(engine: Engine, db_url: str, tmp_path: Path) -> None:
    append_events(engine, 3)
    done = export(db_url, tmp_path, "--format", "csv")
    assert done.returncode == 0, done.stderr
    records = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [int(r["seq"]) for r in records] == [1, 2, 3]
    chain = rows(engine)
    for record, row in zip(records, chain, strict=True):
        assert record["hash"] == row["hash"] and record["prev_hash"] == row["prev_hash"]
        assert record["before"] == row["before"] and record["after"] == row["after"]
        rehashed = audit.row_hash(
            **{k: record[k] for k in audit.EXPORT_FIELDS if k not in ("hash", "seq", "at")},
            seq=int(record["seq"]),
            at=datetime.fromisoformat(record["at"]),
        )
        assert rehashed == record["hash"]


def test_export_with_since_after_the_last_event_writes_only_the_csv_header(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    append_events(engine, 2)
    done = export(db_url, tmp_path, "--format", "csv", "--since", "2027-01-01T00:00:00+00:00")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ",".join(audit.EXPORT_FIELDS) + "\n"


@pytest.mark.parametrize("args", [["--format", "xml"], ["--since", "last tuesday"]])
def test_export_exits_2_when_an_option_is_invalid(tmp_path: Path, args: list[str]) -> None:
    done = export(f"sqlite:///{tmp_path / 'countersign.db'}", tmp_path, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip()


def test_an_append_outside_an_audited_transaction_is_refused(engine: Engine) -> None:
    # Taking the chain lock after rows are written can deadlock on PostgreSQL, so it is taken first.
    with pytest.raises(RuntimeError, match="audited=True"), transaction(engine) as session:
        audit.append(session, at=START, actor="U0BOB", action="draft.rejected", subject="d_x")
    assert rows(engine) == []
