"""Housekeeping: rows that are only kept for a while are deleted once their time is up.

- Outbox jobs delivered (`done`) more than 7 days ago, and jobs that gave up (`dead`) more than
  30 days ago: the draft, its decisions and the audit log keep what happened; the job row only
  held the call (a callback job holds a copy of the agent's view of the draft).
- Stored Idempotency-Key answers older than 24 hours: intake already treats them as expired
  (keys are kept at least 24 h, as DESIGN.md and the IETF draft ask).

Drafts, decisions, cap usage and the audit log are never deleted. Each table is swept in chunks
of `CHUNK` rows, one short transaction each, so a large backlog (the first sweep after an
upgrade) never holds SQLite's write lock, or PostgreSQL's row locks, for long. Every replica
runs the sweep; deleting what another replica already deleted does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session

from bot.intake import IDEMPOTENCY_RETENTION
from bot.runtime import Runtime
from storage import queries
from storage.db import transaction

DONE_JOBS_KEPT = timedelta(days=7)
DEAD_JOBS_KEPT = timedelta(days=30)
CHUNK = 2_000
SWEEP_EVERY_SECONDS = 3_600.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    done_jobs: int
    dead_jobs: int
    idempotency_records: int

    @property
    def total(self) -> int:
        return self.done_jobs + self.dead_jobs + self.idempotency_records


def prune(rt: Runtime, *, chunk: int = CHUNK) -> Pruned:
    """Delete every row whose keeping time is up, as of `rt.clock()`; say how many went."""
    now = rt.clock()
    pruned = Pruned(
        done_jobs=_in_chunks(
            rt,
            chunk,
            lambda s, n: queries.delete_finished_jobs(
                s, status="done", finished_before=now - DONE_JOBS_KEPT, limit=n
            ),
        ),
        dead_jobs=_in_chunks(
            rt,
            chunk,
            lambda s, n: queries.delete_finished_jobs(
                s, status="dead", finished_before=now - DEAD_JOBS_KEPT, limit=n
            ),
        ),
        idempotency_records=_in_chunks(
            rt,
            chunk,
            lambda s, n: queries.delete_idempotency_records(
                s, created_before=now - IDEMPOTENCY_RETENTION, limit=n
            ),
        ),
    )
    if pruned.total:
        log.info(
            "pruned %s delivered and %s dead outbox jobs, %s idempotency records",
            pruned.done_jobs,
            pruned.dead_jobs,
            pruned.idempotency_records,
        )
    return pruned


def _in_chunks(rt: Runtime, chunk: int, delete: Callable[[Session, int], int]) -> int:
    total = 0
    while True:
        with transaction(rt.engine) as session:
            deleted = delete(session, chunk)
        total += deleted
        if deleted < chunk:
            return total


def due(last: datetime | None, now: datetime) -> bool:
    """Whether a sweep last run at `last` (None: never) is due again at `now`."""
    return last is None or (now - last).total_seconds() >= SWEEP_EVERY_SECONDS
