"""A database of 100,000 drafts: digest build time, GET /v1/drafts/{id} latency, server peak RSS.

Usage: `.venv/bin/python bench/large.py [--drafts 100000] [--requests 2000] [--database-url URL]`.
It fills a fresh SQLite file (or the PostgreSQL database named) with drafts spread over the last
seven days (a third approved, a fifth rejected, some pending, with their decisions), times
`digest.build` for yesterday in-process, then starts the real server (`python -m bot serve`),
reads random drafts with 8 concurrent clients and reports p50/p99, and the server's peak resident
memory (VmHWM from /proc). Nothing is asserted: the numbers go in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot import agents, digest  # noqa: E402
from bot.runtime import Runtime, new_draft_id  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from storage import migrate  # noqa: E402
from storage.db import create_db_engine  # noqa: E402
from storage.tables import Decision, Draft  # noqa: E402
from tests.conftest import make_env, write_config  # noqa: E402
from tests.processes import ServerProcess  # noqa: E402


def fill(rt: Runtime, agent_id: int, count: int, now: datetime) -> list[str]:
    rng = random.Random(1)
    ids: list[str] = []
    drafts: list[dict[str, object]] = []
    decisions: list[dict[str, object]] = []
    for n in range(count):
        created = now - timedelta(seconds=rng.randrange(7 * 86400))
        draft_id = new_draft_id()
        roll = rng.random()
        status = (
            "executed"
            if roll < 0.33
            else "rejected"
            if roll < 0.53
            else "expired"
            if roll < 0.6
            else "pending"
        )
        decided = created + timedelta(seconds=rng.randrange(60, 7200)) if status != "pending" else None
        drafts.append(
            {
                "id": draft_id,
                "agent_id": agent_id,
                "category": "refund" if n % 3 == 0 else "reply",
                "status": status,
                "summary": f"ticket {n}",
                "body": "Hi, your order ships Monday. " * 4,
                "context": "Where is my order? " * 3,
                "amount_minor": 3000 if n % 3 == 0 else None,
                "currency": "USD" if n % 3 == 0 else None,
                "payload": "{}",
                "risk": json.dumps({"level": "none", "findings": []}),
                "approved_body": None,
                "edited": False,
                "version": 1,
                "approvals_needed": 1,
                "decided_by": "U0ALICE" if decided else None,
                "decided_at": decided,
                "execution_status": "succeeded" if status == "executed" else "none",
                "execution_attempts": 1 if status == "executed" else 0,
                "execution_ambiguous": False,
                # Pending ones are still open (nothing for the expiry timer to do during the run).
                "expires_at": now + timedelta(hours=4)
                if status == "pending"
                else created + timedelta(hours=4),
                "created_at": created,
                "updated_at": decided or created,
            }
        )
        if status in ("executed", "rejected"):
            action = "approve" if status == "executed" else "reject"
            decisions.append(
                {
                    "draft_id": draft_id,
                    "action": action,
                    "by": "U0ALICE",
                    "reason": "no" if action == "reject" else None,
                    "at": decided,
                }
            )
        ids.append(draft_id)
        if len(drafts) == 5000:
            _flush(rt, drafts, decisions)
    _flush(rt, drafts, decisions)
    return ids


def _flush(rt: Runtime, drafts: list[dict[str, object]], decisions: list[dict[str, object]]) -> None:
    with rt.engine.begin() as conn:
        if drafts:
            conn.execute(sa.insert(Draft.__table__), drafts)  # type: ignore[attr-defined]
        if decisions:
            conn.execute(sa.insert(Decision.__table__), decisions)  # type: ignore[attr-defined]
    drafts.clear()
    decisions.clear()


async def read_drafts(url: str, token: str, ids: list[str], requests: int) -> list[float]:
    rng = random.Random(2)
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:

        async def client(n: int) -> None:
            for _ in range(n):
                started = time.perf_counter()
                async with session.get(f"{url}/v1/drafts/{rng.choice(ids)}", headers=headers) as response:
                    await response.read()
                    assert response.status == 200
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(client(requests // 8) for _ in range(8)))
    return latencies


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drafts", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cs-large-") as tmp:
        workdir = Path(tmp)
        url = args.database_url or f"sqlite:///{workdir / 'large.db'}"
        env = os.environ | make_env(url, write_config(workdir, rate="1000000/s"))
        settings = load_settings(env)
        engine = create_db_engine(settings.database_url)
        migrate.upgrade(engine)
        rt = Runtime(engine=engine, config=settings.config)
        registered = agents.add(
            rt, name=f"large-{random.randrange(10**6)}", categories=["refund", "reply"], callback_prefixes=[]
        )
        agent = agents.authenticate(rt, registered.token)
        now = datetime.now(UTC)
        started = time.perf_counter()
        ids = fill(rt, agent.id, args.drafts, now)  # type: ignore[arg-type]
        filled = time.perf_counter() - started
        yesterday = now.astimezone(settings.config.timezone).date() - timedelta(days=1)
        started = time.perf_counter()
        built = digest.build(rt, yesterday)
        digest_seconds = time.perf_counter() - started
        engine.dispose()
        server = ServerProcess("large", env, workdir / "server.log").start()
        try:
            latencies = asyncio.run(read_drafts(server.url, registered.token, ids, args.requests))
            assert server.process is not None
            rss = peak_rss_mib(server.process.pid)
        finally:
            server.stop()
    backend = "PostgreSQL" if url.startswith("postgres") else "SQLite"
    cuts = statistics.quantiles(latencies, n=100)
    submitted = sum(line.submitted for line in built.lines.values())
    print(f"large: {args.drafts:,} drafts on {backend} (filled in {filled:.1f} s)")
    print(f"digest.build for {yesterday} ({submitted:,} drafts that day): {digest_seconds * 1000:.0f} ms")
    print(
        f"GET /v1/drafts/{{id}}: {len(latencies)} requests, 8 clients: p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms"
    )
    print(f"server peak RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
