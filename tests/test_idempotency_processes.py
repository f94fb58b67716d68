from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot import agents
from bot.runtime import Runtime
from bot.settings import load_settings
from storage import migrate
from storage.db import create_db_engine
from tests.conftest import make_env, write_config
from tests.doubles.signing import SignedRequest
from tests.processes import ServerProcess, fire

REPLY = {"category": "reply", "summary": "Answer order 1042", "body": "Hi Dana, it ships on Monday."}


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    started: list[ServerProcess] = []

    def start(env: dict[str, str]) -> str:
        name = f"server-{len(started)}"
        server = ServerProcess(name, env, tmp_path / f"{name}.log")
        started.append(server)
        return server.start().url

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    # A high rate limit: this test is about idempotency, not the per-agent limit.
    return make_env(db_url, write_config(tmp_path, rate="10000/s"))


@pytest.fixture
def runtime(env: dict[str, str]) -> Iterator[Runtime]:
    settings = load_settings(env)
    engine = create_db_engine(settings.database_url)
    migrate.upgrade(engine)
    yield Runtime(engine=engine, config=settings.config)
    engine.dispose()


def submit_from_processes(urls: list[str], token: str, key: str, *, processes: int, each: int) -> list[Any]:
    """`processes` client processes of `each` threads POST the same body with the same key at once."""
    body = json.dumps(REPLY).encode()
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key, "Content-Type": "application/json"}
    requests = [
        (f"{urls[n % len(urls)]}/v1/drafts", SignedRequest(body, headers)) for n in range(processes * each)
    ]
    return [[status, json.loads(text)] for status, text in fire(requests, processes=processes)]


def assert_exactly_one_draft(runtime: Runtime, results: list[Any], expected: int) -> None:
    assert len(results) == expected
    accepted = [body for status, body in results if status == 202]
    refused = [(status, body) for status, body in results if status != 202]
    assert accepted, results
    assert all(body == accepted[0] for body in accepted)
    assert all(status == 409 and body["error"]["code"] == "conflict" for status, body in refused), refused
    with runtime.engine.connect() as conn:
        drafts = conn.execute(sa.text("SELECT id, status FROM draft")).all()
        records = conn.execute(sa.text("SELECT count(*) FROM idempotency_record")).scalar_one()
        submitted = conn.execute(
            sa.text("SELECT count(*) FROM audit_event WHERE action = 'draft.submitted'")
        ).scalar_one()
    assert [tuple(row) for row in drafts] == [(accepted[0]["id"], accepted[0]["status"])]
    assert (records, submitted) == (1, 1)


def test_fifty_concurrent_submissions_with_one_key_from_several_processes_create_one_draft(
    env: dict[str, str], runtime: Runtime, start_server: Callable[[dict[str, str]], str]
) -> None:
    token = agents.add(runtime, name="support-bot", categories=["reply"], callback_prefixes=[]).token
    url = start_server(env)
    results = submit_from_processes([url], token, "order-1042-reply", processes=5, each=10)
    assert_exactly_one_draft(runtime, results, 50)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_fifty_concurrent_submissions_with_one_key_to_two_servers_create_one_draft(
    env: dict[str, str], runtime: Runtime, start_server: Callable[[dict[str, str]], str]
) -> None:
    token = agents.add(runtime, name="support-bot", categories=["reply"], callback_prefixes=[]).token
    urls = [start_server(env), start_server(env)]
    results = submit_from_processes(urls, token, "order-1042-reply", processes=5, each=10)
    assert_exactly_one_draft(runtime, results, 50)
