from __future__ import annotations

import contextlib
import json
import os
import random
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from bot import audit
from tests.processes import Cluster, ServerProcess, wait_for

# Short leases so a job held by a killed process is taken over within seconds.
FAST = {"COUNTERSIGN_OUTBOX_LEASE_SECONDS": "2"}
DRAFTS = int(os.environ.get("COUNTERSIGN_CRASH_DRAFTS", "4"))


def try_submit(cluster: Cluster, server: ServerProcess, token: str, n: int) -> dict[str, Any] | None:
    try:
        return cluster.submit(server, token, summary=f"crash {n}", idempotency_key=f"crash-{n}")
    except (urllib.error.URLError, ConnectionError, OSError, AssertionError):
        return None


def click(cluster: Cluster, server: ServerProcess, draft_id: str) -> None:
    request, _ = cluster.approve_click("U0ALICE", draft_id)
    with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
        server.post("/slack/events", request.body, request.headers)


def check_invariants(cluster: Cluster, accepted: list[str]) -> None:
    rows = {row[0]: row[1] for row in cluster.rows("SELECT id, status FROM draft")}
    for draft_id in accepted:
        assert draft_id in rows, f"draft {draft_id} got a 2xx but is gone"
    posted: dict[str, int] = {}
    for message in cluster.slack.messages():
        payload = (message.get("metadata") or {}).get("event_payload") or {}
        if "draft_id" in payload:
            posted[payload["draft_id"]] = posted.get(payload["draft_id"], 0) + 1
    assert all(count == 1 for count in posted.values()), f"posted twice: {posted}"
    keys: dict[str, set[str]] = {}
    effects: dict[str, set[str]] = {}
    for request in cluster.executor.requests():
        draft_id = json.loads(request["body"])["draft_id"]
        keys.setdefault(draft_id, set()).add(request["key"])
        if request["status"] is not None and 200 <= request["status"] < 300:
            # An executor deduplicating on the key acts once per distinct (key, request).
            effects.setdefault(request["key"], set()).add(request["body"])
    assert all(found == {draft_id} for draft_id, found in keys.items()), keys
    assert all(len(bodies) == 1 for bodies in effects.values()), effects
    executed = [row[0] for row in cluster.rows("SELECT id FROM draft WHERE status = 'executed'")]
    assert set(executed) == set(effects)
    for used, amount in cluster.rows("SELECT count_used, amount_used_minor FROM cap_usage"):
        assert used <= 20 and amount <= 50000
    assert audit.verify(cluster.runtime.engine).ok


@pytest.mark.parametrize(
    "point", ["after_draft_commit", "after_approve_commit", "after_executor_sent", "inside_record"]
)
def test_a_kill_at_each_step_boundary_loses_nothing_and_repeats_nothing(
    db_url: str, tmp_path: Path, point: str
) -> None:
    with Cluster.running(db_url, tmp_path) as cluster:
        token = cluster.add_agent()
        crashing = cluster.env() | FAST | {"COUNTERSIGN_CRASH_AT": point}
        server = ServerProcess("crashing", crashing, tmp_path / "crashing.log")
        cluster.servers.append(server)
        server.start()
        accepted: list[str] = []
        for n in range(DRAFTS):
            created = try_submit(cluster, server, token, n)
            if created is None:
                break
            accepted.append(created["id"])
            click(cluster, server, created["id"])
            if server.process is not None and server.process.poll() is not None:
                break
        wait_for(
            lambda: server.process is not None and server.process.poll() == 137, timeout=30, what="the crash"
        )
        server.restart(env=cluster.env() | FAST)
        # Whatever the crash interrupted is finished after the restart; the agent retries its submission.
        for n in range(DRAFTS):
            created = try_submit(cluster, server, token, n)
            assert created is not None
            if created["id"] not in accepted:
                accepted.append(created["id"])
        for draft_id in accepted:
            click(cluster, server, draft_id)

        def settled() -> bool:
            statuses = {row[0] for row in cluster.rows("SELECT status FROM draft")}
            return statuses <= {"executed"}

        wait_for(settled, timeout=60, what="every draft executed")
        assert len(accepted) == DRAFTS
        check_invariants(cluster, accepted)


def test_kill_9_at_random_moments_keeps_every_invariant(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("COUNTERSIGN_CRASH_SEED", "7")))
    with Cluster.running(db_url, tmp_path) as cluster:
        token = cluster.add_agent()
        server = ServerProcess("random", cluster.env() | FAST, tmp_path / "random.log")
        cluster.servers.append(server)
        server.start()
        accepted: list[str] = []
        for n in range(DRAFTS * 2):
            created = try_submit(cluster, server, token, n)
            if created is not None:
                accepted.append(created["id"])
                click(cluster, server, created["id"])
            if rng.random() < 0.4:
                server.restart(kill=True)
        server.restart(kill=True)
        for n in range(DRAFTS * 2):
            created = try_submit(cluster, server, token, n)
            assert created is not None
            if created["id"] not in accepted:
                accepted.append(created["id"])
            click(cluster, server, created["id"])
        wait_for(
            lambda: {row[0] for row in cluster.rows("SELECT status FROM draft")} <= {"executed"},
            timeout=60,
            what="every draft executed",
        )
        check_invariants(cluster, accepted)
