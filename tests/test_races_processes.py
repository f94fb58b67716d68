"""Races across real OS processes: two Countersign servers on one database, clients in other processes.

The Slack double and the executor run in processes of their own (tests/processes.py); every click
and slash command is a signed request POSTed to /slack/events of one of the two servers, so the
races are decided by the database, as they would be between replicas (DESIGN.md invariants 2-4;
reliability checks AC-04, AC-07, AC-09, AC-14). A SQLite file shared by two servers is safe: every
writing transaction is BEGIN IMMEDIATE.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from standardwebhooks import Webhook

from tests.conftest import EXECUTOR_SECRET
from tests.processes import REVIEWERS, Cluster, ServerProcess, fire, wait_for

ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def cluster(db_url: str, tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start a cluster with `cluster(extra_config=...)`; everything it started is stopped after the test."""
    with ExitStack() as stack:
        yield lambda **kwargs: stack.enter_context(Cluster.running(db_url, tmp_path, **kwargs))


def _utc(value: Any) -> datetime:
    """A timestamp column read back through plain SQL (a string on SQLite) as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _count(c: Cluster, sql: str, **params: Any) -> int:
    return int(c.scalar(sql, **params))


# -- AC-04: the double click -------------------------------------------------------------------


def test_fifty_concurrent_approve_clicks_on_two_servers_approve_and_execute_once(
    cluster: ClusterFactory,
) -> None:
    c = cluster()
    servers = c.start_servers(2)
    token = c.add_agent()
    draft_id = c.submit(servers[0], token)["id"]

    # 50 clicks from three reviewers (so also the same person clicking again and again), dealt
    # alternately to the two servers, sent from five client processes released together.
    clicks, paths, clickers = [], [], []
    for n in range(50):
        user = REVIEWERS[n % len(REVIEWERS)]
        request, path = c.approve_click(user, draft_id)
        clicks.append((f"{servers[n % 2].url}/slack/events", request))
        paths.append(path)
        clickers.append(user)
    results = fire(clicks, processes=5)
    assert [status for status, _ in results] == [200] * 50, results

    answers = c.responses(paths)
    wait_for(
        lambda: c.scalar("SELECT status FROM draft WHERE id = :id", id=draft_id) == "executed",
        what="the approved draft to be executed",
    )
    winner = c.scalar("SELECT decided_by FROM draft WHERE id = :id", id=draft_id)
    assert winner in REVIEWERS

    # Exactly one pending→approved transition, one execution job, one reservation.
    assert _count(c, "SELECT count(*) FROM audit_event WHERE action = 'draft.approved'") == 1
    assert _count(c, "SELECT count(*) FROM decision WHERE action = 'approve'") == 1
    assert _count(c, "SELECT count(*) FROM outbox_job WHERE kind = 'executor.call'") == 1
    assert c.rows("SELECT count_used, amount_used_minor FROM cap_usage") == [(1, 3000)]

    # One click was told it approved; every other clicker was told who decided.
    texts = [answers[path]["text"] for path in paths]
    approved = [n for n, text in enumerate(texts) if text.startswith("Approved.")]
    assert len(approved) == 1, texts
    assert clickers[approved[0]] == winner
    told = re.compile(rf"Already (approved|executed) by <@{winner}>\.")
    losers = [text for n, text in enumerate(texts) if n != approved[0]]
    assert all(told.fullmatch(text) for text in losers), losers

    # The executor was called once, with the draft id as its key, signed per Standard Webhooks.
    wait_for(
        lambda: _count(c, "SELECT count(*) FROM outbox_job WHERE status IN ('queued', 'running')") == 0,
        what="the outbox to drain",
    )
    calls = c.executor.requests()
    assert [(call["key"], call["webhook_id"]) for call in calls] == [(draft_id, draft_id)]
    payload = Webhook(EXECUTOR_SECRET).verify(calls[0]["body"], calls[0]["headers"])
    assert payload["draft_id"] == draft_id
    assert payload["approvers"] == [winner]


# -- AC-07: caps across replicas ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "drafts", "amount", "granted", "used", "usage"),
    [
        ("amount=100.00", 40, "30.00", 3, (3, 9000), "3/20 today · 90.00/100.00 USD"),
        ("count=5", 20, "1.00", 5, (5, 500), "5/5 today · 5.00/500.00 USD"),
    ],
    ids=["amount-cap", "count-cap"],
)
def test_concurrent_approvals_on_two_servers_never_exceed_the_cap(
    cluster: ClusterFactory,
    cap: str,
    drafts: int,
    amount: str,
    granted: int,
    used: tuple[int, int],
    usage: str,
) -> None:
    c = cluster()
    servers = c.start_servers(2)
    token = c.add_agent()
    # An admin lowers today's cap from Slack; both replicas read it from the database.
    answer = c.command(servers[1], "U0ADMIN", f"cap refund {cap}")
    assert answer["text"].startswith("Caps of *refund* now:"), answer
    ids = [c.submit(servers[n % 2], token, amount=amount)["id"] for n in range(drafts)]
    statuses = c.rows("SELECT status, approvals_needed FROM draft")
    assert {tuple(s) for s in statuses} == {("pending", 1)}

    clicks, paths = [], []
    for n, draft_id in enumerate(ids):
        request, path = c.approve_click(REVIEWERS[n % len(REVIEWERS)], draft_id)
        clicks.append((f"{servers[n % 2].url}/slack/events", request))
        paths.append(path)
    results = fire(clicks, processes=4)
    assert [status for status, _ in results] == [200] * drafts, results
    answers = c.responses(paths)

    texts = [answers[path]["text"] for path in paths]
    approved = [text for text in texts if text.startswith("Approved.")]
    refused = [text for text in texts if not text.startswith("Approved.")]
    assert len(approved) == granted, texts
    # Refused with the usage shown; the usage a refusal sees is the full cap, whoever won.
    assert set(refused) == {f"Approving would exceed today's cap ({usage}). The draft stays pending."}

    assert c.rows("SELECT count_used, amount_used_minor FROM cap_usage") == [used]
    assert _count(c, "SELECT count(*) FROM audit_event WHERE action = 'draft.approved'") == granted
    decided = _count(c, "SELECT count(*) FROM draft WHERE status IN ('approved', 'executed')")
    assert decided == granted
    assert _count(c, "SELECT count(*) FROM draft WHERE status = 'pending'") == drafts - granted


# -- AC-09: replicas in different host time zones ----------------------------------------------

# 25 hours apart: at every instant these two hosts' local calendar dates differ.
HOST_ZONES = ("Pacific/Kiritimati", "Pacific/Pago_Pago")


def test_replicas_in_different_host_time_zones_count_caps_on_the_same_business_day(
    cluster: ClusterFactory, tmp_path: Path
) -> None:
    c = cluster()
    servers = []
    for zone in HOST_ZONES:
        server = ServerProcess(
            f"server-{zone.split('/')[1]}", c.env() | {"TZ": zone}, tmp_path / f"{zone[8:]}.log"
        )
        c.servers.append(server)
        servers.append(server.start())
    token = c.add_agent()
    business = ZoneInfo("America/New_York")  # the config's `timezone`
    before = datetime.now(UTC).astimezone(business).date().isoformat()
    ids = [c.submit(servers[n % 2], token)["id"] for n in range(4)]
    clicks, paths = [], []
    for n, draft_id in enumerate(ids):
        request, path = c.approve_click(REVIEWERS[n % len(REVIEWERS)], draft_id)
        clicks.append((f"{servers[n % 2].url}/slack/events", request))
        paths.append(path)
    assert [status for status, _ in fire(clicks, processes=2)] == [200] * len(ids)
    texts = [answer["text"] for answer in c.responses(paths).values()]
    assert all(text.startswith("Approved.") for text in texts), texts
    after = datetime.now(UTC).astimezone(business).date().isoformat()

    days = {row[0] for row in c.rows("SELECT reservation_day FROM draft")}
    usage = c.rows("SELECT scope, day, count_used FROM cap_usage")
    # One business day (two only if the test ran across New York's midnight), whatever host ran it.
    assert days <= {before, after} and len(days) <= len({before, after}), (days, before, after)
    assert {day for _, day, _ in usage} == days and sum(n for _, _, n in usage) == 4, usage


# -- AC-14: pause against queued and in-flight executions --------------------------------------

# Three more refund categories with their own channels, so the ten drafts are posted at once
# (Slack's pace is about one message per second per channel, after a burst of three).
EXTRA_REFUNDS = "".join(
    f"""
[categories.refund-{region}]
channel = "C0REFUND{region.upper()}"
reviewers = ["U0ALICE", "U0BOB", "U0ADMIN"]
daily_count_cap = 20
daily_amount_cap = "500.00"
currency = "USD"
max_amount = "300.00"
executor = {{ url = "EXECUTOR_URL", secret_env = "REFUND_EXECUTOR_SECRET" }}
ai_review = false
"""
    for region in ("eu", "uk", "ca")
)
CATEGORIES = ("refund", "refund-eu", "refund-uk", "refund-ca")
RETRY_AFTER = 12  # seconds the executor asks for after its 503s (the pause must land within them)
PROBE = {
    "category": "reply",
    "summary": "Order 1042",
    "body": "It ships Monday.",
    "context": "Where?",
    "amount": None,
}


def _with_executor(text: str) -> str:
    url = re.search(r'executor = \{ url = "([^"]+)"', text)
    assert url is not None
    return text.replace("EXECUTOR_URL", url.group(1))


def _jobs(c: Cluster) -> dict[str, dict[str, Any]]:
    """executor.call jobs by draft id."""
    rows = c.rows(
        "SELECT payload, status, attempts, claimed_at, run_after FROM outbox_job WHERE kind = 'executor.call'"
    )
    return {
        json.loads(payload)["draft_id"]: {
            "status": status,
            "attempts": attempts,
            "claimed_at": None if claimed_at is None else _utc(claimed_at),
            "run_after": _utc(run_after),
        }
        for payload, status, attempts, claimed_at, run_after in rows
    }


def _audit(c: Cluster, action: str) -> list[tuple[int, datetime, str]]:
    rows = c.rows("SELECT seq, at, subject FROM audit_event WHERE action = :a ORDER BY seq", a=action)
    return [(int(seq), _utc(at), subject) for seq, at, subject in rows]


def test_pause_holds_queued_executions_and_racing_approvals_on_every_replica(
    cluster: ClusterFactory,
) -> None:
    c = cluster(extra_config=EXTRA_REFUNDS, edit_config=_with_executor)
    a, b = c.start_servers(2)
    token = c.add_agent(categories=(*CATEGORIES, "reply"))
    probe_token = c.add_agent("probe-bot", categories=("reply",))

    # Ten approved refunds: the executor answers the first eight requests 503 with Retry-After, so
    # their jobs wait, queued, for their next attempt, and holds the last two (in flight). Holding
    # the last ones, not the first: today's outbox worker claims nothing new while a job of its
    # batch is in flight, so early holds would keep other first attempts from being sent at all.
    c.executor.script(*[{"status": 503, "retry_after": RETRY_AFTER}] * 8, {"hold": True}, {"hold": True})
    queued = [
        c.submit((a, b)[n % 2], token, category=CATEGORIES[n % 4], amount="10.00")["id"] for n in range(10)
    ]
    # Six more drafts whose approve clicks will race the pause.
    racing = [
        c.submit((a, b)[n % 2], token, category=CATEGORIES[n % 4], amount="5.00")["id"] for n in range(6)
    ]
    wait_for(
        lambda: _count(c, "SELECT count(*) FROM draft WHERE slack_ts IS NULL") == 0,
        what="every draft to be posted",
    )
    clicks, paths = [], []
    for n, draft_id in enumerate(queued):
        request, path = c.approve_click(REVIEWERS[n % 3], draft_id)
        clicks.append((f"{(a, b)[n % 2].url}/slack/events", request))
        paths.append(path)
    assert [status for status, _ in fire(clicks, processes=2)] == [200] * 10
    assert all(r["text"].startswith("Approved.") for r in c.responses(paths).values())

    def settled() -> bool:
        jobs = _jobs(c).values()
        waiting = [j for j in jobs if j["status"] == "queued" and j["attempts"] == 1]
        running = [j for j in jobs if j["status"] == "running"]
        return len(c.executor.requests()) == 10 and (len(waiting), len(running)) == (8, 2)

    wait_for(
        settled,
        what="two executions in flight and eight waiting to retry",
        state=lambda: (
            len(c.executor.requests()),
            sorted((j["status"], j["attempts"]) for j in _jobs(c).values()),
        ),
    )

    settled_jobs = _jobs(c)
    in_flight = [d for d, job in settled_jobs.items() if job["status"] == "running"]
    # When the first of the eight waiting retries falls due (read before the pause is sent).
    first_retry = min(job["run_after"] for job in settled_jobs.values() if job["status"] == "queued")

    # The pause (to server b) and six approve clicks (to both servers), released together.
    pause, pause_path = c.command_request("U0ALICE", "pause support-bot incident 4711")
    race = [(f"{b.url}/slack/events", pause)]
    race_paths = []
    for n, draft_id in enumerate(racing):
        request, path = c.approve_click(REVIEWERS[n % 3], draft_id)
        race.append((f"{(a, b)[n % 2].url}/slack/events", request))
        race_paths.append(path)
    assert [status for status, _ in fire(race, processes=3, lead=0.8)] == [200] * 7
    answers = c.responses([pause_path, *race_paths])
    assert answers[pause_path]["text"].startswith(":octagonal_sign: Paused *support-bot*"), answers
    acked = datetime.fromtimestamp(answers[pause_path]["wall"], UTC)  # after the pause committed
    [(pause_seq, paused_at, _)] = _audit(c, "agent.paused")

    # The two in-flight requests finish (the executor had them before the pause).
    c.executor.release()
    wait_for(
        lambda: all(
            c.scalar("SELECT status FROM draft WHERE id = :id", id=d) == "executed" for d in in_flight
        ),
        what="the two in-flight executions to finish",
    )

    # Let every waiting retry fall due, then make both replicas claim work (a probe agent's drafts
    # are posted by the outbox): a claim pass that ran after the retries were due skipped them.
    jobs = _jobs(c)
    due = max(j["run_after"] for j in jobs.values() if j["status"] == "queued")
    assert paused_at < first_retry, (
        "precondition: the pause must land while the eight retries wait out Retry-After"
    )
    wait_for(lambda: datetime.now(UTC) > due, what="the held retries to fall due")
    probes = [c.submit(server, probe_token, **PROBE)["id"] for server in (a, b)]
    wait_for(
        lambda: all(c.scalar("SELECT slack_ts FROM draft WHERE id = :id", id=p) for p in probes),
        what="the probe drafts to be posted",
    )
    renders = c.rows("SELECT payload, claimed_at FROM outbox_job WHERE kind = 'slack.render'")
    assert all(_utc(at) > due for payload, at in renders if json.loads(payload)["draft_id"] in probes)

    # No execution job was claimed after the pause: the ten queued ones were last claimed before
    # its audit event, and any racing approval that committed first was claimed before the ack.
    jobs = _jobs(c)
    for draft_id in queued:
        assert jobs[draft_id]["claimed_at"] < paused_at, (draft_id, jobs[draft_id], paused_at)
    assert all(job["claimed_at"] is None or job["claimed_at"] < acked for job in jobs.values()), jobs
    waiting = [d for d in queued if jobs[d]["status"] == "queued"]
    assert len(waiting) == 8 and all(jobs[d]["attempts"] == 1 for d in waiting)

    # The racing clicks: each was either approved before the pause (its audit event comes first in
    # the chain) or refused because the agent is paused, and then still pending.
    approved_before = {subject: seq for seq, _, subject in _audit(c, "draft.approved")}
    for draft_id, path in zip(racing, race_paths, strict=True):
        text = answers[path]["text"]
        status = c.scalar("SELECT status FROM draft WHERE id = :id", id=draft_id)
        if text.startswith("Approved."):
            # Serializable: an approval the clicker was told about committed before the pause did.
            assert approved_before[draft_id] < pause_seq, (
                f"{draft_id} approved after the pause committed: audit #{approved_before[draft_id]} > "
                f"#{pause_seq}; clicker told at {answers[path]['wall']:.3f}, pause acked at "
                f"{answers[pause_path]['wall']:.3f}"
            )
            assert status in ("approved", "executed")
        else:
            assert text.startswith("The agent is paused"), text
            assert status == "pending"

    # The executor saw nothing new after the pause beyond what was in flight: its ten first
    # attempts arrived before the pause was acknowledged, plus at most one request per racing
    # approval whose job was claimed before the ack.
    requests = c.executor.requests()
    late = [r for r in requests if datetime.fromtimestamp(r["arrived"], UTC) > acked]
    claimed_racing = {d for d in racing if d in jobs and jobs[d]["claimed_at"] is not None}
    assert {r["key"] for r in late} <= claimed_racing, late
    keys = [r["key"] for r in requests]
    assert all(keys.count(d) == 1 for d in queued)
    assert all(keys.count(d) <= 1 for d in racing)
    assert len(keys) <= 10 + len(claimed_racing)

    # An admin resumes: every held execution runs, once per key.
    answer = c.command(a, "U0ADMIN", "resume support-bot")
    assert answer["text"].startswith(":arrow_forward: Resumed *support-bot*"), answer
    approved = [d for d in (*queued, *racing) if d in jobs]
    wait_for(
        lambda: _count(c, "SELECT count(*) FROM draft WHERE status = 'executed'") == len(approved),
        what="every approved draft to be executed after the resume",
    )
    assert c.executor.effects() == dict.fromkeys(approved, 1)
