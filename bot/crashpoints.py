"""Named step boundaries where the crash tests kill the process, as `kill -9` would.

Set COUNTERSIGN_CRASH_AT=<point> (and optionally COUNTERSIGN_CRASH_AFTER=N to skip the first N
passes); production never sets it. The exit is immediate: no cleanup, no flush, no commit.
"""

from __future__ import annotations

import os

POINTS = (
    "after_draft_commit",  # drafts stored, before the Slack post
    "after_approve_commit",  # approval and cap reservation committed, before anything else
    "after_executor_sent",  # the executor answered, before the outcome is recorded
    "inside_record",  # inside the transaction that records the outcome, before commit
)
_passes: dict[str, int] = {}


def reached(point: str) -> None:
    """Die here when the crash tests ask for it."""
    if os.environ.get("COUNTERSIGN_CRASH_AT") != point:
        return
    _passes[point] = _passes.get(point, 0) + 1
    if _passes[point] > int(os.environ.get("COUNTERSIGN_CRASH_AFTER", "0")):
        os._exit(137)
