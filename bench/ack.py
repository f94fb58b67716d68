"""Ack benchmark: a signed Approve click, Countersign against a bare Bolt app, same run.

Usage: `.venv/bin/python -m bench.ack [--samples 300] [--warmup 30]` (from the repository root);
`--slow-database 500 --samples 200` measures acks with PostgreSQL 500 ms away (run_slow_database).

It starts, each in its own process: the Slack Web API double (tests/doubles/slack_api/), an
executor that answers 200 (tests/processes.py), the real server (`python -m bot serve`) on a fresh
temporary SQLite file, and a bare Bolt app: an `AsyncApp` with the same signing secret, its client
pointed at the Slack double, and one listener that only acks, served with aiohttp through
slack_bolt.adapter.aiohttp (to_bolt_request / to_aiohttp_response).

Before measuring, it submits one draft per sample through the agent API (a 5.00 refund, spread
over many categories so Slack's per-channel pace does not hold up the posts) and waits until every
draft is posted and the outbox is idle. Then, one click at a time, alternating between the two
targets, it POSTs a freshly signed `block_actions` Approve payload to /slack/events over a kept-alive
connection and records:
- request → HTTP response, for both targets (Countersign acks once the decision is committed:
  handlers/context.py's ack_when_done);
- request → decision committed, for Countersign: the draft's row is polled in the SQLite file
  (a WAL reader, every 0.2 ms) until it leaves `pending`.
After each Countersign click it waits for the outbox to go idle again (message update, executor
call), so every sample starts from a quiet server. Nothing is asserted; the numbers go in the
README (target: p99 under 100 ms, database transaction included).

Reading the numbers: Bolt's asyncio listener runner (process_before_response=False) polls for the
ack every 10 ms (`await asyncio.sleep(0.01)`), so both targets carry that floor; Countersign's
decision transaction usually commits inside that window, and its ack always comes after the commit.
"""

from __future__ import annotations

import argparse
import http.client
import re
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bench.latency_proxy import LatencyProxy
from handlers import ids
from tests.conftest import BOT_TOKEN, SIGNING_SECRET
from tests.doubles import signing
from tests.processes import REVIEWERS, Cluster, ServerProcess, child_env, free_port, guarded, wait_for

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = [f"refund{n:02d}" for n in range(40)]
CONFIG_HEAD = """\
timezone = "UTC"
admins = ["U0ADMIN"]
agent_rate_limit = "100000/s"
alerts_channel = "C0ALERTS"
[defaults]
ai_review = false
"""
CATEGORY = """
[categories.{name}]
channel = "C0{channel}"
reviewers = ["U0ALICE", "U0BOB", "U0ADMIN"]
daily_count_cap = 100000
daily_amount_cap = "1000000.00"
currency = "USD"
max_amount = "300.00"
executor = {{ url = "{executor_url}", secret_env = "REFUND_EXECUTOR_SECRET" }}
"""


def bench_config(template: str) -> str:
    """The bench's own config; only the executor URL is taken from the test template."""
    found = re.search(r'executor = \{ url = "([^"]+)"', template)
    assert found is not None
    return CONFIG_HEAD + "".join(
        CATEGORY.format(name=name, channel=name.upper(), executor_url=found.group(1)) for name in CATEGORIES
    )


# -- the bare Bolt app (run in its own process with --bare-bolt PORT --slack-api URL) -------------


def serve_bare_bolt(port: int, slack_api_url: str) -> None:
    app = AsyncApp(
        client=AsyncWebClient(token=BOT_TOKEN, base_url=slack_api_url),
        signing_secret=SIGNING_SECRET,
        process_before_response=False,
    )

    @app.action(ids.APPROVE)
    async def approve(ack: AsyncAck) -> None:
        await ack()

    async def events(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    web_app = web.Application()
    web_app.router.add_post("/slack/events", events)
    web.run_app(web_app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    seconds: list[float] = field(default_factory=list)
    errors: int = 0

    def row(self) -> str:
        ms = sorted(s * 1000 for s in self.seconds)
        q = statistics.quantiles(ms, n=100, method="inclusive")
        return f"{self.name:<36}{len(ms):>5}{q[49]:>9.1f}{q[89]:>9.1f}{q[98]:>9.1f}{ms[-1]:>9.1f}{self.errors:>8}"


class Target:
    """A kept-alive HTTP connection to one /slack/events endpoint."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def post(self, request: signing.SignedRequest) -> int:
        try:
            self.conn.request("POST", "/slack/events", body=request.body, headers=request.headers)
            response = self.conn.getresponse()
            response.read()
            return response.status
        except (http.client.HTTPException, OSError):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            return 0


def submit_drafts(cluster: Cluster, server: ServerProcess, token: str, count: int) -> list[str]:
    """`count` 5.00 refunds through the agent API, spread over the categories (so Slack's
    per-channel pace does not hold their posts up); their ids."""
    with ThreadPoolExecutor(8) as pool:
        return list(
            pool.map(
                lambda n: str(
                    cluster.submit(server, token, category=CATEGORIES[n % len(CATEGORIES)], amount="5.00")[
                        "id"
                    ]
                ),
                range(count),
            )
        )


def click(cluster: Cluster, n: int, draft_id: str) -> signing.SignedRequest:
    request, _ = cluster.approve_click(REVIEWERS[n % len(REVIEWERS)], draft_id)
    return request


def wait_idle(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    wait_for(
        lambda: (
            db.execute("SELECT count(*) FROM outbox_job WHERE status IN ('queued', 'running')").fetchone()[0]
            == 0
        ),
        timeout=timeout,
        what="the outbox to go idle",
    )


def committed(db: sqlite3.Connection, draft_id: str, timeout: float = 10.0) -> float | None:
    """perf_counter() at the first poll that sees the draft out of `pending`."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        row = db.execute("SELECT status FROM draft WHERE id = ?", (draft_id,)).fetchone()
        if row is not None and row[0] != "pending":
            return time.perf_counter()
        time.sleep(0.0002)
    return None


def run(samples: int, warmup: int) -> None:
    total = samples + warmup
    with (
        tempfile.TemporaryDirectory(prefix="cs-ack-") as tmp,
        Cluster.running(
            f"sqlite:///{Path(tmp) / 'countersign.db'}", Path(tmp), edit_config=bench_config, show_logs=False
        ) as cluster,
    ):
        [server] = cluster.start_servers(1)
        token = cluster.add_agent("bench-bot", categories=CATEGORIES)
        bare_port = free_port()
        bare_log = (Path(tmp) / "bare.log").open("wb")
        bare_process = subprocess.Popen(
            guarded(
                [
                    sys.executable,
                    "-m",
                    "bench.ack",
                    "--bare-bolt",
                    str(bare_port),
                    "--slack-api",
                    cluster.slack.base_url,
                ]
            ),
            cwd=ROOT,
            env=child_env({}),
            stdout=bare_log,
            stderr=subprocess.STDOUT,
        )
        try:
            drafts = submit_drafts(cluster, server, token, total)
            db = sqlite3.connect(str(Path(tmp) / "countersign.db"), isolation_level=None)
            wait_for(
                lambda: db.execute("SELECT count(*) FROM draft WHERE slack_ts IS NULL").fetchone()[0] == 0,
                timeout=120,
                what="every draft to be posted",
            )
            wait_idle(db)
            wait_for(lambda: _listening(bare_port), timeout=30, what="the bare Bolt app")

            ours, bare_bolt = Target(server.url), Target(f"http://127.0.0.1:{bare_port}")
            ack = Series("countersign: request → ack")
            commit = Series("countersign: request → committed")
            bare_ack = Series("bare Bolt: request → ack")
            for n, draft_id in enumerate(drafts):
                request = click(cluster, n, draft_id)
                began = time.perf_counter()
                status = ours.post(request)
                acked = time.perf_counter()
                done = committed(db, draft_id)
                if n >= warmup:
                    if status == 200 and done is not None:
                        ack.seconds.append(acked - began)
                        commit.seconds.append(done - began)
                    else:
                        ack.errors += 1
                        commit.errors += 1
                wait_idle(db)

                request = click(cluster, n, draft_id)
                began = time.perf_counter()
                status = bare_bolt.post(request)
                acked = time.perf_counter()
                if n >= warmup:
                    if status == 200:
                        bare_ack.seconds.append(acked - began)
                    else:
                        bare_ack.errors += 1
            decided = db.execute(
                "SELECT count(*) FROM draft WHERE status IN ('approved', 'executed')"
            ).fetchone()[0]
            db.close()
        finally:
            bare_process.terminate()
            try:
                bare_process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                bare_process.kill()
                bare_process.wait()
            bare_log.close()

    print(
        f"ack: signed Approve click → POST /slack/events, {samples} samples each after {warmup} warm-up,"
        " one at a time, alternating targets; countersign on SQLite, one server process"
    )
    print(f"{'series':<36}{'n':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
    for series in (ack, commit, bare_ack):
        print(series.row())
    print(f"drafts approved: {decided}/{total}")


def run_slow_database(samples: int, pg_url: str, latency: float, drain: float = 300.0) -> None:
    """AC-13: the same clicks against a server whose PostgreSQL answers `latency` seconds late
    (bench/latency_proxy.py between them). The drafts are submitted and posted before the latency
    is switched on; then the clicks go one at a time without waiting for their decisions, which
    queue behind each other on the audit chain's lock, as clicks arriving at a slow database would.
    Then it waits up to `drain` seconds for every clicker's answer and counts what they were told."""
    # A database of its own: the audit chain's advisory lock is per database, and clicks queued
    # behind a slow one would hold it for minutes against anything else using the same database.
    name = f"countersign_bench_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urllib.parse.urlsplit(pg_url)
    direct = parts._replace(path=f"/{name}").geturl()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="cs-ack-slow-") as tmp,
            Cluster.running(direct, Path(tmp), edit_config=bench_config, show_logs=False) as cluster,
            LatencyProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy,
        ):
            proxied = parts._replace(
                netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}", path=f"/{name}"
            ).geturl()
            env = cluster.env() | {"COUNTERSIGN_DATABASE_URL": proxied}
            server = ServerProcess("server-slow-db", env, Path(tmp) / "server.log")
            cluster.servers.append(server)
            server.start()
            token = cluster.add_agent("bench-bot", categories=CATEGORIES)
            drafts = submit_drafts(cluster, server, token, samples)
            wait_for(
                lambda: cluster.scalar("SELECT count(*) FROM draft WHERE slack_ts IS NULL") == 0,
                timeout=120,
                what="every draft to be posted",
            )
            proxy.delay = latency
            ours = Target(server.url)
            ack = Series(f"countersign: request → ack (+{latency * 1000:.0f} ms DB)")
            paths = []
            began_all = time.perf_counter()
            for n, draft_id in enumerate(drafts):
                request, path = cluster.approve_click(REVIEWERS[n % len(REVIEWERS)], draft_id)
                paths.append(path)
                began = time.perf_counter()
                status = ours.post(request)
                if status == 200:
                    ack.seconds.append(time.perf_counter() - began)
                else:
                    ack.errors += 1
            clicking = time.perf_counter() - began_all
            # Then the decisions drain at the database's pace: wait for every clicker's answer.
            answers = {r["path"]: str((r.get("json") or {}).get("text")) for r in cluster.slack.responses()}
            deadline = time.monotonic() + drain
            while len(set(paths) & set(answers)) < len(paths) and time.monotonic() < deadline:
                time.sleep(1)
                answers = {
                    r["path"]: str((r.get("json") or {}).get("text")) for r in cluster.slack.responses()
                }
            drained = time.perf_counter() - began_all
            texts = [answers.get(path) for path in paths]
            approved = sum(1 for text in texts if text and text.startswith("Approved."))
            other = sorted({text[:80] for text in texts if text and not text.startswith("Approved.")})
            decided = cluster.scalar("SELECT count(*) FROM draft WHERE status IN ('approved', 'executed')")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")

    print(
        f"ack with a slow database: {samples} signed Approve clicks, one at a time, each on its own draft;"
        f" countersign on PostgreSQL through a proxy adding {latency * 1000:.0f} ms to every round trip"
    )
    print(f"{'series':<36}{'n':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
    print(ack.row())
    print(
        f"clicks sent in {clicking:.1f} s; answers: {approved} approved, {len(paths) - approved} other"
        f" ({sum(t is None for t in texts)} missing) after {drained:.0f} s; drafts decided: {decided}/{samples}"
    )
    for text in other:
        print(f"  other answer: {text}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="measured clicks per target")
    parser.add_argument("--warmup", type=int, default=30, help="unmeasured clicks per target first")
    parser.add_argument(
        "--slow-database",
        metavar="MS",
        type=float,
        help="instead: acks with PostgreSQL answering MS ms late (needs --database-url)",
    )
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--bare-bolt", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slack-api", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_bolt:
        serve_bare_bolt(args.bare_bolt, args.slack_api)
        return
    if args.slow_database is not None:
        run_slow_database(args.samples, args.database_url, args.slow_database / 1000)
        return
    run(args.samples, args.warmup)


if __name__ == "__main__":
    main()
