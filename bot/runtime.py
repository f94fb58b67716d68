"""What every use-case needs, built once by the app factory or the CLI: engine, config, clock, ids."""

from __future__ import annotations

import base64
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


def new_draft_id() -> str:
    """A sortable, unguessable id: 48 bits of milliseconds then 80 random bits, base32."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + secrets.token_bytes(10)
    return "d_" + base64.b32encode(raw).decode().lower().rstrip("=")


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
