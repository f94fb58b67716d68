"""The hash-chained audit log: append inside the caller's transaction, verify, export.

Each row's hash covers a canonical JSON of its fields and the previous row's hash, so an
edited, deleted or reordered row breaks the chain at that row.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.db import transaction
from storage.rawsql import AUDIT_LOCKED, RawCursor
from storage.tables import AuditEvent, AuditHead

GENESIS = "0" * 64


def stored_row_hash(row: Any) -> str:
    """The hash a stored audit row (an AuditEvent, or a result row with its columns) should carry."""
    return row_hash(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        subject=row.subject,
        before=row.before,
        after=row.after,
        outcome=row.outcome,
        prev_hash=row.prev_hash,
    )


def canonical(value: Any) -> str:
    """The one JSON spelling hashed and stored: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def row_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    before: str,
    after: str,
    outcome: str,
    prev_hash: str,
) -> str:
    fields = {
        "seq": seq,
        "at": at.isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "subject": subject,
        "before": before,
        "after": after,
        "outcome": outcome,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical(fields).encode()).hexdigest()


@dataclass(frozen=True)
class Event:
    """One audit event before it is chained."""

    at: datetime
    actor: str
    action: str
    subject: str
    before: Any = None
    after: Any = None
    outcome: str = "ok"


_COLUMNS = ("seq", "at", "actor", "action", "subject", "before", "after", "outcome", "prev_hash", "hash")


def append_many(session: Session, events: Sequence[Event]) -> None:
    """Chain and insert events in order, in the caller's transaction, under the chain lock.

    Plain driver statements (storage/rawsql.py): appending is on the intake hot path.
    """
    if not events:
        return
    if not session.info.get(AUDIT_LOCKED):
        raise RuntimeError(
            "audit events are appended only in transaction(audited=True), which takes the chain lock"
            " before any row is written (taken later, PostgreSQL can deadlock)"
        )
    db = RawCursor.of(session)
    last = db.rows("SELECT seq, hash FROM audit_event ORDER BY seq DESC LIMIT 1")
    seq, prev_hash = (last[0][0], last[0][1]) if last else (0, GENESIS)
    rows = []
    for event in events:
        seq += 1
        before_json, after_json = canonical(event.before), canonical(event.after)
        digest = row_hash(
            seq=seq,
            at=event.at,
            actor=event.actor,
            action=event.action,
            subject=event.subject,
            before=before_json,
            after=after_json,
            outcome=event.outcome,
            prev_hash=prev_hash,
        )
        rows.append(
            (
                seq,
                event.at,
                event.actor,
                event.action,
                event.subject,
                before_json,
                after_json,
                event.outcome,
                prev_hash,
                digest,
            )
        )
        prev_hash = digest
    db.insert("audit_event", _COLUMNS, rows)
    db.run("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev_hash))


def append(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    before: Any = None,
    after: Any = None,
    outcome: str = "ok",
) -> None:
    """Append one event in the caller's transaction, after taking the chain lock."""
    append_many(session, [Event(at, actor, action, subject, before, after, outcome)])


@dataclass(frozen=True)
class Verification:
    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str | None = None


def verify(engine: Engine, *, witness: tuple[int, str] | None = None) -> Verification:
    """Walk the chain from the first row; report the first row that does not fit.

    The chain alone cannot show that its newest rows were deleted. The head recorded with every
    append (`audit_head`) must still be in the chain, and so must `witness`, a head published
    earlier (the digest prints one every day), which also holds when the recorded head was
    rewritten too.
    """
    expected_seq, prev_hash, rows = 1, GENESIS, 0
    with transaction(engine, write=False) as session:
        # Read before the walk: rows appended meanwhile come after it, never before.
        recorded = session.execute(sa.select(col(AuditHead.seq), col(AuditHead.hash))).first()
        if recorded is None:
            return Verification(False, 0, 0, GENESIS, 0, "the recorded head (table audit_head) is missing")
        heads = [((recorded[0], recorded[1]), "the log's recorded head")]
        if witness is not None:
            heads.append((witness, "the published head"))
        for event in session.exec(select(AuditEvent).order_by(AuditEvent.seq)).yield_per(1000):  # type: ignore[arg-type]
            rows += 1
            if event.seq != expected_seq:
                return Verification(
                    False, rows, expected_seq - 1, prev_hash, event.seq, f"row {expected_seq} is missing"
                )
            if event.prev_hash != prev_hash:
                return Verification(
                    False,
                    rows,
                    event.seq - 1,
                    prev_hash,
                    event.seq,
                    "prev_hash does not match the row before",
                )
            if stored_row_hash(event) != event.hash:
                return Verification(
                    False, rows, event.seq - 1, prev_hash, event.seq, "row content does not match its hash"
                )
            for (seq, digest), name in heads:
                if event.seq == seq and event.hash != digest:
                    return Verification(
                        False, rows, event.seq - 1, prev_hash, event.seq, f"row differs from {name}"
                    )
            expected_seq, prev_hash = event.seq + 1, event.hash
    for (seq, _), name in reversed(heads):  # the published head first: it says more
        if seq >= expected_seq:
            problem = f"rows {expected_seq}..{seq} are missing: {name} (#{seq}) is gone"
            return Verification(False, rows, expected_seq - 1, prev_hash, expected_seq, problem)
    return Verification(True, rows, expected_seq - 1, prev_hash)


def head(session: Session) -> tuple[int, str]:
    """The chain head (sequence, hash): the digest publishes it as an outside witness."""
    last = session.execute(
        sa.select(col(AuditEvent.seq), col(AuditEvent.hash)).order_by(col(AuditEvent.seq).desc()).limit(1)
    ).first()
    return (last[0], last[1]) if last else (0, GENESIS)


EXPORT_FIELDS = ("seq", "at", "actor", "action", "subject", "before", "after", "outcome", "prev_hash", "hash")


def export(engine: Engine, *, since: datetime | None, fmt: str) -> Iterator[str]:
    """Yield the log as JSON lines or CSV (header first), oldest first."""
    query = select(AuditEvent).order_by(AuditEvent.seq)  # type: ignore[arg-type]
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(EXPORT_FIELDS)
        yield buffer.getvalue()
    with transaction(engine, write=False) as session:
        for event in session.exec(query).yield_per(1000):
            record = {name: getattr(event, name) for name in EXPORT_FIELDS}
            record["at"] = event.at.isoformat()
            if fmt == "csv":
                buffer = io.StringIO()
                csv.writer(buffer, lineterminator="\n").writerow(record[name] for name in EXPORT_FIELDS)
                yield buffer.getvalue()
            else:
                record["before"] = json.loads(event.before)
                record["after"] = json.loads(event.after)
                yield json.dumps(record, ensure_ascii=False) + "\n"
