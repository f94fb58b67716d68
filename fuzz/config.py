"""A small Countersign configuration for the targets that need settings (money, categories)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

from bot.settings import Settings, load_settings

CONFIG = """\
timezone = "America/New_York"
admins = ["U0ADMIN"]
[categories.refund]
channel = "C0REFUNDS"
reviewers = ["U0ALICE", "U0ADMIN"]
daily_count_cap = 20
daily_amount_cap = "500.00"
currency = "USD"
two_person_above = "200.00"
max_amount = "300.00"
allowed_link_domains = ["help.acme.com", "acme.com"]
forbidden_phrases = ["we guarantee", "legal advice"]
ai_review = false
[categories.credit]
channel = "C0CREDIT"
reviewers = ["U0ALICE"]
daily_amount_cap = "50000"
currency = "JPY"
ai_review = false
[categories.payout]
channel = "C0PAYOUT"
reviewers = ["U0ALICE"]
daily_amount_cap = "100.000"
currency = "KWD"
ai_review = false
[categories.reply]
channel = "C0SUPPORT"
reviewers = ["U0ALICE", "U0BOB"]
daily_count_cap = 300
ai_review = false
"""


@cache
def workdir() -> Path:
    """A private directory for this process (config file, SQLite database), removed at exit."""
    # SQLite fsyncs every commit: keep the fuzzer's database in memory. mkdtemp makes it private.
    shm = Path("/dev/shm")  # noqa: S108
    path = Path(tempfile.mkdtemp(prefix="countersign-fuzz-", dir=shm if shm.is_dir() else None))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@cache
def settings() -> Settings:
    config = workdir() / "countersign.toml"
    config.write_text(CONFIG)
    return load_settings(
        {
            "COUNTERSIGN_CONFIG": str(config),
            "COUNTERSIGN_DATABASE_URL": f"sqlite:///{workdir() / 'countersign.db'}",
        }
    )
