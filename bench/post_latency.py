"""Submit-to-post latency: how long a draft takes from the agent's POST to its Slack message
(reliability check AC-23: p95 under 5 s in normal conditions).

Usage: `.venv/bin/python -m bench.post_latency [--seconds 60] [--channels 4] [--rate 0.5]
[--burst 10]` (from the repository root).

It starts, each in its own process, the Slack Web API double (tests/doubles/slack_api/, holding
every channel to Slack's pace of about one message a second after a burst of three, and
answering 429 past it) and the real server (`python -m bot serve`) on a fresh temporary SQLite
file, and registers one agent for `--channels` categories, each with its own channel.

1. Steady load: for `--seconds`, drafts arrive in each category at random (Poisson) moments,
   `--rate` a second on average per category, from 8 client threads.
2. A burst: `--burst` drafts sent at once into one category, as an agent working through a
   backlog would.

A draft's latency runs from just before its POST to the `ts` Slack gave its message: the
double's `ts` is its wall-clock time of posting, on the same host as this script's clock.
Nothing is asserted; the numbers go in the README. Slack allows a channel about one message a
second, so a category that gets drafts faster than that queues them whatever Countersign does:
the burst shows that queue, the steady phase the latency below it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

from bench.ack import CONFIG_HEAD
from tests.processes import Cluster, ServerProcess, wait_for

CATEGORY = """
[categories.{name}]
channel = "C0{channel}"
reviewers = ["U0ALICE", "U0BOB", "U0ADMIN"]
daily_count_cap = 100000
"""


def category_names(channels: int) -> list[str]:
    return [f"reply{n:02d}" for n in range(channels)]


def bench_config(channels: int) -> str:
    return CONFIG_HEAD + "".join(
        CATEGORY.format(name=name, channel=name.upper()) for name in category_names(channels)
    )


class Submitter:
    """Sends drafts and notes, for each, the wall-clock time just before its POST."""

    def __init__(self, cluster: Cluster, server: ServerProcess, token: str) -> None:
        self.cluster, self.server, self.token = cluster, server, token
        self.sent: dict[str, float] = {}
        self._lock = threading.Lock()

    def submit(self, category: str, n: int) -> None:
        began = time.time()
        created = self.cluster.submit(
            self.server,
            self.token,
            category=category,
            amount=None,
            summary=f"Answer ticket {n}",
            body=f"Hi Dana, ticket {n}: your order ships on Monday.",
            context=f"Ticket {n}: where is my order?",
        )
        with self._lock:
            self.sent[str(created["id"])] = began


def arrivals(
    categories: list[str], rate: float, seconds: float, rng: random.Random
) -> list[tuple[float, str]]:
    """(offset in seconds, category) of every steady-phase draft, in time order."""
    out: list[tuple[float, str]] = []
    for category in categories:
        at = rng.expovariate(rate)
        while at < seconds:
            out.append((at, category))
            at += rng.expovariate(rate)
    return sorted(out)


def latencies(cluster: Cluster, sent: dict[str, float], timeout: float) -> list[float]:
    """Seconds from POST to post of each draft in `sent`, once every one is posted."""

    def posted() -> dict[str, float] | None:
        with cluster.reader.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, slack_ts FROM draft WHERE slack_ts IS NOT NULL")).all()
        found = {str(row[0]): float(row[1]) for row in rows if str(row[0]) in sent}
        return found if len(found) == len(sent) else None

    found = wait_for(posted, timeout=timeout, what=f"all {len(sent)} drafts to be posted")
    return sorted(found[draft_id] - began for draft_id, began in sent.items())


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def report(name: str, values: list[float]) -> str:
    return (
        f"{name:<34}{len(values):>5}{statistics.median(values) * 1000:>10.0f}"
        f"{percentile(values, 95) * 1000:>10.0f}{percentile(values, 99) * 1000:>10.0f}"
        f"{max(values) * 1000:>10.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the steady phase")
    parser.add_argument("--channels", type=int, default=4, help="categories, each with its own channel")
    parser.add_argument("--rate", type=float, default=0.5, help="drafts a second per category (average)")
    parser.add_argument("--burst", type=int, default=10, help="drafts sent at once into one category")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    categories = category_names(args.channels)

    with (
        tempfile.TemporaryDirectory(prefix="cs-post-") as tmp,
        Cluster.running(
            f"sqlite:///{Path(tmp) / 'countersign.db'}",
            Path(tmp),
            edit_config=lambda _template: bench_config(args.channels),
            show_logs=False,
        ) as cluster,
    ):
        cluster.slack.configure(enforce_channel_rate=True)
        [server] = cluster.start_servers(1)
        token = cluster.add_agent("bench-bot", categories=categories)

        steady = Submitter(cluster, server, token)
        schedule = arrivals(categories, args.rate, args.seconds, random.Random(args.seed))
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            pending: list[Future[None]] = []
            for n, (offset, category) in enumerate(schedule):
                time.sleep(max(0.0, started + offset - time.monotonic()))
                pending.append(pool.submit(steady.submit, category, n))
            for future in pending:
                future.result()
        steady_latency = latencies(cluster, steady.sent, timeout=120)

        burst = Submitter(cluster, server, token)
        with ThreadPoolExecutor(8) as pool:
            for future in [pool.submit(burst.submit, categories[0], n) for n in range(args.burst)]:
                future.result()
        burst_latency = latencies(cluster, burst.sent, timeout=60 + 2 * args.burst)
        refused = sum(1 for call in cluster.slack.calls("chat.postMessage") if not call.ok)

    print(
        f"submit-to-post on SQLite: {args.channels} channels, {args.rate:g} drafts/s each for"
        f" {args.seconds:g} s (Poisson), then a burst of {args.burst} into one channel"
    )
    print(f"{'series':<34}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(report("steady: POST → Slack message", steady_latency))
    print(report(f"burst of {args.burst}: POST → Slack message", burst_latency))
    print(f"posts Slack refused (429 past its per-channel pace): {refused}")


if __name__ == "__main__":
    main()
