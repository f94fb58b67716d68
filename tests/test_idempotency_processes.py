from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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

ROOT = Path(__file__).resolve().parents[1]
REPLY = {"category": "reply", "summary": "Answer order 1042", "body": "Hi Dana, it ships on Monday."}

# A client process: N threads that each POST the same body with the same key, released together
# at a wall-clock instant shared by every client process; prints [[status, body], ...].
CLIENT = r"""
import json, sys, threading, time, urllib.error, urllib.request

url, token, key, body, start_at, count = sys.argv[1:7]
results = [None] * int(count)
barrier = threading.Barrier(int(count))


def send(i):
    request = urllib.request.Request(
        url,
        data=body.encode(),
        method="POST",
        headers={
            "Authorization": "Bearer " + token,
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        },
    )
    barrier.wait()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            results[i] = [response.status, json.loads(response.read())]
    except urllib.error.HTTPError as error:
        results[i] = [error.code, json.loads(error.read())]


threads = [threading.Thread(target=send, args=(i,)) for i in range(int(count))]
while time.time() < float(start_at):
    time.sleep(0.001)
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""


def child_env(env: dict[str, str]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "COUNTERSIGN_"))}
    return inherited | env | {"COUNTERSIGN_LOG_LEVEL": "WARNING"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise AssertionError(f"server did not become healthy:\n{log.read_text()}")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> str:
        port = free_port()
        log = tmp_path / f"server-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=child_env(env),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, url, log)
        return url

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    start_at = time.time() + 1.5
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT,
                f"{urls[n % len(urls)]}/v1/drafts",
                token,
                key,
                json.dumps(REPLY),
                str(start_at),
                str(each),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    results: list[Any] = []
    try:
        for client in clients:
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0, err
            results.extend(json.loads(out))
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    return results


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
