from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot import agents
from bot.app import Options, create_app
from bot.runtime import Runtime
from bot.settings import Settings, load_settings
from storage import migrate
from storage.db import create_db_engine

PG_URL = os.environ.get("COUNTERSIGN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SIGNING_SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test"
EXECUTOR_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

CONFIG = """\
timezone = "America/New_York"
admins = ["U0ADMIN"]
agent_rate_limit = "{rate}"
alerts_channel = "C0ALERTS"
max_body_bytes = 262144
risk_workers = {risk_workers}
[digest]
channel = "C0AUDIT"
at = "09:00"
[categories.refund]
channel = "C0REFUNDS"
reviewers = ["U0ALICE", "U0BOB", "U0ADMIN", "U0GUEST", "U0GONE"]
daily_count_cap = 20
daily_amount_cap = "500.00"
currency = "USD"
two_person_above = "200.00"
max_amount = "300.00"
expire_after = "4h"
executor = {{ url = "{executor_url}", secret_env = "REFUND_EXECUTOR_SECRET" }}
allowed_link_domains = ["help.acme.com", "acme.com"]
forbidden_phrases = ["we guarantee", "legal advice"]
ai_review = false
policy = "Refunds go to the original payment method within 30 days of delivery."
[categories.reply]
channel = "C0SUPPORT"
reviewers = ["U0ALICE", "U0BOB", "U0CAROL"]
daily_count_cap = 300
ai_review = false
"""


class FrozenClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def _pg_schema_url(schema: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'countersign.db'}"
        return
    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(PG_URL.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def write_config(
    tmp_path: Path,
    *,
    executor_url: str = "http://127.0.0.1:9/refunds",
    rate: str = "50/s",
    extra: str = "",
    risk_workers: int = 0,
) -> Path:
    """The test config (risk rules in the server process unless `risk_workers` says otherwise)."""
    path = tmp_path / "countersign.toml"
    path.write_text(CONFIG.format(executor_url=executor_url, rate=rate, risk_workers=risk_workers) + extra)
    return path


def make_env(
    db_url: str, config_path: Path, slack_api_url: str = "http://127.0.0.1:9/api/"
) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "COUNTERSIGN_DATABASE_URL": db_url,
        "COUNTERSIGN_CONFIG": str(config_path),
        "COUNTERSIGN_SLACK_API_URL": slack_api_url,
        "REFUND_EXECUTOR_SECRET": EXECUTOR_SECRET,
        # Several server processes share one SQLite file on purpose in the race tests.
        "COUNTERSIGN_ALLOW_SHARED_SQLITE": "1",
    }


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 24, 15, 0, tzinfo=UTC))


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return load_settings(make_env(db_url, write_config(tmp_path)))


@pytest.fixture
def rt(settings: Settings, clock: FrozenClock) -> Iterator[Runtime]:
    engine = create_db_engine(settings.database_url)
    migrate.upgrade(engine)
    yield Runtime(engine=engine, config=settings.config, clock=clock)
    engine.dispose()


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    token: str
    other_token: str
    rt: Runtime

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


@pytest.fixture
async def api(settings: Settings, clock: FrozenClock) -> AsyncIterator[Api]:
    app = create_app(settings, Options(clock=clock, run_workers=False))
    from handlers.agent_api import RUNTIME

    rt = app[RUNTIME]
    one = agents.add(
        rt, name="support-bot", categories=["refund", "reply"], callback_prefixes=["http://127.0.0.1:8080/"]
    )
    two = agents.add(rt, name="other-bot", categories=["reply"], callback_prefixes=[])
    async with TestClient(TestServer(app)) as client:
        yield Api(client=client, token=one.token, other_token=two.token, rt=rt)
