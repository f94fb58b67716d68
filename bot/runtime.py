"""What every use-case needs, built once by the app factory or the CLI: engine, config, clock, ids."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from bot.settings import Config

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def new_draft_id() -> str:
    """An unguessable id: 48 bits of milliseconds then 80 random bits, base32 (RFC 4648, lower
    case). As text it does not sort by time: base32 puts its digits after its letters.

    The same text as `base64.b32encode(raw).decode().lower().rstrip("=")` (tests/test_ids.py),
    spelled out here because base64's pure-Python encoder costs ~8 µs per draft.
    """
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + secrets.token_bytes(10)
    return "d_" + _base32(int.from_bytes(raw, "big") << 2, 26)


def _base32(number: int, digits: int) -> str:
    return "".join(_BASE32[(number >> shift) & 31] for shift in range(5 * (digits - 1), -1, -5))


def _nothing() -> None:
    return None


@dataclass
class Runtime:
    engine: Engine
    config: Config
    clock: Clock = utcnow
    new_id: Callable[[], str] = new_draft_id
    # Called after a commit that enqueued outbox jobs, so the local worker starts at once.
    wake_outbox: Callable[[], None] = field(default=_nothing)
    # Attempts before an execution is given up (failed, or needs reconciliation when unknown).
    executor_attempts: int = 6
