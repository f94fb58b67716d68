"""Restart time: from `kill -9` of a running server to the next one answering /healthz.

Usage: `.venv/bin/python -m bench.startup [--restarts 10]` (from the repository root).

A crashed server is back only when its replacement has imported everything, opened its database
and started its workers; until then drafts wait in the agent's retries and clicks fail. This
starts the Slack and executor doubles and a server (`python -m bot serve`) on a fresh temporary
SQLite file, then kills it `--restarts` times, each time timing spawn to the first 200 from
/healthz, once without ANTHROPIC_API_KEY and once with one (the key makes the server import the
anthropic SDK; nothing is called). Nothing is asserted; the numbers go in the README.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.doubles.anthropic_api import DEFAULT_API_KEY
from tests.processes import Cluster, ServerProcess


def restarts(env: dict[str, str], count: int, log: Path) -> list[float]:
    server = ServerProcess("bench", env, log).start()
    seconds = []
    try:
        for _ in range(count):
            server.stop(grace=0)
            started = time.perf_counter()
            server.start()
            seconds.append(time.perf_counter() - started)
    finally:
        server.stop()
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--restarts", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        with Cluster.running(f"sqlite:///{path}/countersign.db", path, show_logs=False) as cluster:
            print(f"restart after kill -9 to /healthz 200, SQLite, {args.restarts} restarts each")
            print(f"{'ANTHROPIC_API_KEY':<18} {'median s':>9} {'min s':>7} {'max s':>7}")
            for label, extra in (("unset", {}), ("set", {"ANTHROPIC_API_KEY": DEFAULT_API_KEY})):
                seconds = restarts(cluster.env() | extra, args.restarts, path / f"{label}.log")
                print(
                    f"{label:<18} {statistics.median(seconds):9.2f} {min(seconds):7.2f} {max(seconds):7.2f}"
                )


if __name__ == "__main__":
    main()
