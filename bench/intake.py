"""Intake benchmark: POST /v1/drafts throughput and latency, Countersign against a bare handler.

Usage: `.venv/bin/python bench/intake.py [--seconds 10] [--clients 16] [--database-url URL]
[--risk-workers N]`. It starts the real server (`python -m bot serve`) on a fresh temporary SQLite
file, or on the database that --database-url names (e.g. `postgresql://postgres@127.0.0.1:5432/test`),
with `risk_workers = N` in its config when given, registers an agent with `python -m bot agents
add`, and drives POST /v1/drafts in category `reply` (no money), each request with its own
Idempotency-Key, from --clients concurrent aiohttp clients for --seconds (after a one-second
warm-up). Slack calls go to a local stub that answers at once, so the outbox worker does its
normal work. CPU per request counts the server and its risk worker processes; client CPU is this
load generator's own, per request.

In the same run it starts bench/bare_insert.py twice and drives it the same way: a bare aiohttp
handler that checks a bearer token and does one durable insert per request into the database
Countersign ran on (its own SQLite file, WAL, synchronous=FULL; or a table of its own in the
PostgreSQL database, dropped afterwards), and the same handler running Countersign's risk rules
on each draft before its insert ("bare + rules": what checking drafts as they arrive costs on its
own). It prints requests/s, p50, p99 and CPU for all three and Countersign's ratio to each floor,
and checks that every 202 left a row. Nothing is asserted: the numbers go in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
BODY = {
    "category": "reply",
    "summary": "Answer the customer about order 1042",
    "body": "Hi Dana, your order 1042 ships on Monday. You'll get a tracking link by email.",
    "context": "Where is my order 1042? It's been a week.",
}
CONFIG = """\
timezone = "UTC"
admins = ["U0ADMIN"]
agent_rate_limit = "1000000/s"
[categories.reply]
channel = "C0SUPPORT"
reviewers = ["U0ALICE", "U0BOB"]
ai_review = false
"""


@dataclass
class Result:
    name: str
    accepted: int
    errors: Counter[int | str]
    seconds: float
    latencies: list[float]

    acknowledged: int  # every 202, warm-up included: each must have left a row
    cpu_seconds: float = 0.0  # the server's CPU over the run, warm-up included
    client_cpu_seconds: float = 0.0  # this load generator's CPU over the same time

    @property
    def cpu_per_request(self) -> float:
        """Server CPU microseconds per accepted request: steadier than req/s on a shared machine."""
        return self.cpu_seconds / self.acknowledged * 1e6

    @property
    def client_cpu_per_request(self) -> float:
        return self.client_cpu_seconds / self.acknowledged * 1e6

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{url} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{url} did not start:\n{log.read_text()}")


@dataclass
class Started:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU so far of the process (all threads) and of its live child processes
        (the risk workers), from Linux /proc."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if stat.parent.name == str(self.pid) or fields[1] == str(self.pid):
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def started(name: str, args: list[str], env: dict[str, str], workdir: Path, port: int) -> Iterator[Started]:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url, log)
        yield Started(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def drive(name: str, url: str, token: str, *, clients: int, seconds: float, warmup: float) -> Result:
    payload = json.dumps(BODY).encode()
    client_cpu = time.process_time()
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    acknowledged = [0]
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                headers = {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": uuid.uuid4().hex,
                }
                began = time.perf_counter()
                try:
                    async with session.post(f"{url}/v1/drafts", data=payload, headers=headers) as response:
                        await response.read()
                        status: int | str = response.status
                except aiohttp.ClientError as exc:
                    status = type(exc).__name__
                if record:
                    latencies.append(time.perf_counter() - began)
                    statuses[status] += 1
                elif status == 202:
                    acknowledged[0] += 1

        await asyncio.gather(*(client(time.perf_counter() + warmup, False) for _ in range(clients)))
        began = time.perf_counter()
        await asyncio.gather(*(client(began + seconds, True) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    accepted = statuses.pop(202, 0)
    result = Result(name, accepted, statuses, elapsed, latencies, acknowledged[0] + accepted)
    result.client_cpu_seconds = time.process_time() - client_cpu
    return result


@contextmanager
def connected(url: str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def count_rows(url: str, table: str = "draft") -> int:
    with connected(url) as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def serve_slack_stub(port: int) -> None:
    """Answer every Slack Web API call at once, as a healthy Slack would."""
    counter = itertools.count(1)

    async def call(request: web.Request) -> web.Response:
        form = await request.post() if request.content_type != "application/json" else await request.json()
        channel = str(form.get("channel") or "C0SUPPORT")
        ts = f"{int(time.time())}.{next(counter):06d}"
        body = {"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts}}
        if request.match_info["method"] == "users.info":
            body["user"] = {"id": form.get("user"), "deleted": False, "is_restricted": False}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/api/{method}", call)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def run_bare(
    name: str, options: list[str], env: dict[str, str], workdir: Path, args: argparse.Namespace
) -> tuple[Result, int]:
    """Start bench/bare_insert.py on a fresh table in the database Countersign ran on (its own
    SQLite file, or a table of its own in the PostgreSQL database), drive it, and count the rows
    it stored."""
    token = "bare_" + secrets.token_urlsafe(24)
    table = f"bench_bare_{secrets.token_hex(3)}"
    database = args.database_url or str(workdir / f"{table}.db")
    url = args.database_url or f"sqlite:///{database}"
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "bare_insert.py"), database, str(port), *options]
    try:
        with started(
            name, command, env | {"BARE_TOKEN": token, "BARE_TABLE": table}, workdir, port
        ) as target:
            cpu = target.cpu_seconds()
            result = asyncio.run(
                drive(name, target.url, token, clients=args.clients, seconds=args.seconds, warmup=1.0)
            )
            result.cpu_seconds = target.cpu_seconds() - cpu
        return result, count_rows(url, table)
    finally:
        if args.database_url:
            with connected(url) as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per target")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--database-url", help="Countersign's database (default: a fresh SQLite file)")
    parser.add_argument("--risk-workers", type=int, help="risk_workers in the config (default: not set, 0)")
    parser.add_argument("--slack-stub", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slack_stub:
        serve_slack_stub(args.slack_stub)
        return

    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp:
        workdir = Path(tmp)
        workers = "" if args.risk_workers is None else f"risk_workers = {args.risk_workers}\n"
        (workdir / "countersign.toml").write_text(workers + CONFIG)
        database_url = args.database_url or f"sqlite:///{workdir / 'countersign.db'}"
        slack_port, server_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "COUNTERSIGN_"))} | {
            "SLACK_BOT_TOKEN": "xoxb-bench",
            "SLACK_SIGNING_SECRET": "bench-signing-secret",
            "COUNTERSIGN_DATABASE_URL": database_url,
            "COUNTERSIGN_CONFIG": str(workdir / "countersign.toml"),
            "COUNTERSIGN_SLACK_API_URL": f"http://127.0.0.1:{slack_port}/api/",
        }
        agent = f"bench-{secrets.token_hex(3)}"
        added = subprocess.run(
            [sys.executable, "-m", "bot", "agents", "add", agent, "--categories", "reply"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode != 0:
            sys.exit(f"agents add failed:\n{added.stderr}")
        token = next(line[7:] for line in added.stdout.splitlines() if line.startswith("token: "))
        before = count_rows(database_url)

        python = sys.executable
        stub = [python, __file__, "--slack-stub", str(slack_port)]
        server = [python, "-m", "bot", "serve", "--port", str(server_port)]
        with (
            started("slack-stub", stub, env, workdir, slack_port),
            started("countersign", server, env, workdir, server_port) as target,
        ):
            cpu = target.cpu_seconds()
            ours = asyncio.run(
                drive(
                    "countersign", target.url, token, clients=args.clients, seconds=args.seconds, warmup=1.0
                )
            )
            ours.cpu_seconds = target.cpu_seconds() - cpu
        stored = count_rows(database_url) - before

        bare, bare_stored = run_bare("bare aiohttp", [], env, workdir, args)
        checked, checked_stored = run_bare("bare + rules", ["--risk-rules"], env, workdir, args)

    backend = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
    print(
        f"intake: POST /v1/drafts, {args.clients} clients, {args.seconds:g} s each, countersign on {backend}"
        f" (risk workers: {args.risk_workers or 0})"
    )
    print(
        f"{'target':<15}{'requests/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'rows/202s':>15}"
        f"{'CPU us/req':>12}{'client CPU':>12}"
    )
    results = ((ours, stored), (bare, bare_stored), (checked, checked_stored))
    for result, rows in results:
        errors = sum(result.errors.values())
        print(
            f"{result.name:<15}{result.rate:>12.1f}{result.percentile(50):>9.1f}"
            f"{result.percentile(99):>9.1f}{errors:>8}{f'{rows}/{result.acknowledged}':>15}"
            f"{result.cpu_per_request:>12.0f}{result.client_cpu_per_request:>12.0f}"
        )
        if result.errors:
            print(f"  non-202 answers: {dict(result.errors)}")
    for floor in (bare, checked):
        print(
            f"countersign/{floor.name}: throughput {ours.rate / floor.rate:.2f}, "
            f"CPU per request {floor.cpu_per_request / ours.cpu_per_request:.2f} (floor/countersign)"
        )


if __name__ == "__main__":
    main()
