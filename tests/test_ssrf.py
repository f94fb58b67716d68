"""AC-20, SSRF: where outgoing webhooks may go, checked at config time and again at connect time."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp.abc import AbstractResolver, ResolveResult
from sqlmodel import col

from bot import agents, netguard
from bot.app import WORKER
from bot.errors import Invalid
from bot.runtime import Runtime
from bot.settings import check_config
from bot.webhooks import WebhookJobs
from handlers import ids
from storage.tables import Agent, Draft, OutboxJob
from tests.conftest import EXECUTOR_SECRET, Api, make_env, write_config
from tests.doubles.receiver import Receiver
from tests.harness import Harness, eventually, eventually_async, harness
from tests.test_cli import run


class StubResolver(AbstractResolver):
    """DNS as the test says: `answers` maps a name to the addresses it resolves to, editable mid-test."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for ip in self.answers[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    value = Receiver()
    await value.start()
    yield value
    await value.stop()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.255", "cgnat"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("169.254.1.1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("febf:ffff::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:a9fe:a9fe", "metadata"),
        ("::ffff:10.1.2.3", "private"),
        ("::127.0.0.1", "loopback"),  # IPv4-compatible
        ("64:ff9b::127.0.0.1", "loopback"),  # NAT64
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("64:ff9b::8.8.8.8", "public"),
        ("2002:7f00:1::1", "loopback"),  # 6to4
        ("2002:a9fe:a9fe::1", "metadata"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1
        ("8.8.8.8", "public"),
        ("172.15.255.255", "public"),
        ("172.32.0.0", "public"),
        ("100.63.255.255", "public"),
        ("100.128.0.0", "public"),
        ("2606:4700:4700::1111", "public"),
    ],
)
def test_classify_names_the_class_of_every_address_form(address: str, expected: str) -> None:
    assert netguard.classify(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://2852039166/latest", "canonical"),
        ("http://0xa9fea9fe/latest", "canonical"),
        ("http://0251.0376.0251.0376/latest", "canonical"),
        ("http://0xa9.0xfe.0xa9.0xfe/", "canonical"),
        ("http://169.254.43518/", "canonical"),
        ("http://127.1/", "canonical"),
        ("http://0177.0.0.1/", "canonical"),
        ("http://017700000001:8080/", "canonical"),
        ("http://hooks.0x10/", "canonical"),
        ("http://127.0.0.1./", "host name"),
        ("http://169.254.169.254/latest", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://[::ffff:a9fe:a9fe]/", "metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://[::]:8080/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://user@hooks.example/", "credentials"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://evil.example\\@127.0.0.1/", "backslash"),
        ("http://bücher.example/", "non-ASCII"),
        ("http://hooks example/", "spaces"),
        ("http://[v1.x]/", "IPv6"),
        ("http://hooks.example:0/", "port"),
        ("http://hooks.example:99999/", "port"),
        ("http:///path", "no host"),
        ("ftp://hooks.example/", "http(s)"),
        ("file:///etc/passwd", "http(s)"),
        ("gopher://127.0.0.1:6379/", "http(s)"),
    ],
)
def test_check_url_refuses_obfuscated_and_forbidden_hosts(url: str, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        netguard.check_url(url)
    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",  # an operator's loopback literal: the acceptance tests' receivers
        "http://10.0.0.5/refunds",
        "http://[::1]:9000/",
        "http://[::ffff:127.0.0.1]:9000/",
        "http://billing.internal/refunds",  # DESIGN's own example
        "https://Agent.Example.com:8443/hooks/?a=1#f",
        "http://localhost:3000/",
        "http://127.0.0.1.nip.io/",  # a name: what it resolves to is checked at connect time
    ],
)
def test_check_url_accepts_what_an_operator_may_write(url: str) -> None:
    netguard.check_url(url)


@pytest.mark.parametrize(
    ("kind", "host", "address", "allowed"),
    [
        ("executor", "billing.internal", "10.0.0.1", True),
        ("executor", "billing.internal", "127.0.0.1", True),
        ("executor", "billing.internal", "100.64.0.7", True),
        ("executor", "billing.internal", "169.254.169.254", False),
        ("executor", "billing.internal", "::ffff:169.254.169.254", False),
        ("executor", "billing.internal", "fd00:ec2::254", False),
        ("executor", "billing.internal", "0.0.0.0", False),
        ("executor", "billing.internal", "224.0.0.1", False),
        ("callback", "hooks.example", "8.8.8.8", True),
        ("callback", "hooks.example", "2606:4700:4700::1111", True),
        ("callback", "hooks.example", "127.0.0.1", False),
        ("callback", "hooks.example", "10.0.0.1", False),
        ("callback", "hooks.example", "100.64.0.1", False),
        ("callback", "hooks.example", "fc00::1", False),
        ("callback", "hooks.example", "::ffff:127.0.0.1", False),
        ("callback", "hooks.example", "64:ff9b::127.0.0.1", False),
        ("callback", "hooks.example", "169.254.169.254", False),
        ("callback", "localhost", "127.0.0.1", True),
        ("callback", "localhost", "::1", True),
        ("callback", "localhost", "10.0.0.1", False),
        ("callback", "localhost", "8.8.8.8", False),
        ("callback", "10.0.0.1", "10.0.0.1", True),  # the operator's literal prefix
        ("callback", "169.254.169.254", "169.254.169.254", False),
    ],
)
def test_permits_follows_the_policy_table(
    kind: netguard.Kind, host: str, address: str, allowed: bool
) -> None:
    assert netguard.permits(kind, host, ipaddress.ip_address(address)) is allowed


async def test_guarded_resolver_pins_each_lookup_to_the_answers_it_allows_when_dns_rebinds() -> None:
    stub = StubResolver({"hooks.example": ["93.184.215.14"]})
    guard = netguard.GuardedResolver("callback", stub)
    first = await guard.resolve("hooks.example", 443, socket.AF_UNSPEC)
    assert [answer["host"] for answer in first] == ["93.184.215.14"]
    stub.answers["hooks.example"] = ["127.0.0.1"]
    with pytest.raises(netguard.Blocked, match=r"127\.0\.0\.1 \(loopback\)"):
        await guard.resolve("hooks.example", 443, socket.AF_UNSPEC)
    stub.answers["hooks.example"] = ["93.184.215.14", "169.254.169.254", "10.0.0.1"]
    mixed = await guard.resolve("hooks.example", 443, socket.AF_UNSPEC)
    assert [answer["host"] for answer in mixed] == ["93.184.215.14"]
    assert stub.asked == ["hooks.example"] * 3


def test_the_socket_factory_refuses_never_allowed_addresses_and_opens_others() -> None:
    with pytest.raises(netguard.Blocked, match="metadata"):
        netguard.guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80)))
    with pytest.raises(netguard.Blocked, match="unspecified"):
        netguard.guarded_socket((socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::", 80, 0, 0)))
    sock = netguard.guarded_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)))
    assert sock.family == socket.AF_INET
    sock.close()


# Connect time, through the sessions WebhookJobs builds (no storage involved: `rt` is unused there).


async def test_a_callback_name_resolving_to_loopback_never_connects(receiver: Receiver) -> None:
    stub = StubResolver({"hooks.example": ["127.0.0.1"]})
    jobs = WebhookJobs(None, resolver=stub)  # type: ignore[arg-type]
    try:
        with pytest.raises(aiohttp.ClientConnectorError) as raised:
            await jobs.http("callback").post(f"http://hooks.example:{receiver.port}/hook", data=b"{}")
        assert isinstance(raised.value.os_error, netguard.Blocked)
        assert "127.0.0.1 (loopback)" in str(raised.value)
        # The same name is fine for an executor: the stub's address is reachable, so the refusal
        # above is the guard's doing, not the network's.
        async with jobs.http("executor").post(f"http://hooks.example:{receiver.port}/exec") as response:
            assert response.status == 200
    finally:
        await jobs.close()
    assert [r.path for r in receiver.requests] == ["/exec"]


async def test_an_unspecified_literal_is_refused_at_connect_time_though_linux_routes_it_home(
    receiver: Receiver,
) -> None:
    url = f"http://0.0.0.0:{receiver.port}/steal"
    if sys.platform == "linux":
        # Unguarded, 0.0.0.0 reaches a server on 127.0.0.1: that is what the guard is for.
        async with aiohttp.ClientSession() as plain, plain.post(url) as response:
            assert response.status == 200
        receiver.requests.clear()
    jobs = WebhookJobs(None, resolver=StubResolver({}))  # type: ignore[arg-type]
    try:
        for kind in ("executor", "callback"):
            with pytest.raises(aiohttp.ClientConnectorError, match=r"0\.0\.0\.0 \(unspecified\)"):
                await jobs.http(kind).post(url, data=b"{}")
    finally:
        await jobs.close()
    assert receiver.requests == []


# Config time.


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://2852039166/refunds", "canonical"),
        ("http://[::ffff:a9fe:a9fe]/refunds", "metadata"),
        ("http://svc:pw@billing.internal/refunds", "credentials"),
        ("ftp://billing.internal/refunds", "http(s)"),
    ],
)
def test_check_config_names_the_executor_url_when_its_destination_is_forbidden(
    tmp_path: Path, url: str, fragment: str
) -> None:
    problems = check_config(
        write_config(tmp_path, executor_url=url), {"REFUND_EXECUTOR_SECRET": EXECUTOR_SECRET}
    )
    assert [p.key for p in problems] == ["categories.refund.executor.url"]
    assert fragment in problems[0].message


@pytest.mark.parametrize("url", ["http://billing.internal/refunds", "http://127.0.0.1:9/refunds"])
def test_check_config_accepts_internal_executors_as_design_shows(tmp_path: Path, url: str) -> None:
    assert (
        check_config(write_config(tmp_path, executor_url=url), {"REFUND_EXECUTOR_SECRET": EXECUTOR_SECRET})
        == []
    )


@pytest.mark.parametrize(
    ("prefix", "fragment"),
    [
        ("http://169.254.169.254/", "metadata"),
        ("http://0xa9fea9fe/", "canonical"),
        ("http://[fe80::1]:8080/", "link-local"),
        ("http://user@hooks.example/", "credentials"),
    ],
)
def test_agents_add_refuses_a_forbidden_callback_prefix_and_registers_nothing(
    rt: Runtime, prefix: str, fragment: str
) -> None:
    with pytest.raises(Invalid) as raised:
        agents.add(
            rt, name="hook-bot", categories=["reply"], callback_prefixes=["http://127.0.0.1:8080/", prefix]
        )
    assert "callback prefix refused" in raised.value.message and fragment in raised.value.message
    assert agents.list_all(rt) == []


def test_a_bare_origin_prefix_stands_for_its_whole_host_and_is_checked_the_same(rt: Runtime) -> None:
    with pytest.raises(Invalid) as raised:
        agents.add(rt, name="hook-bot", categories=["reply"], callback_prefixes=["http://169.254.169.254"])
    assert "metadata" in raised.value.message
    agents.add(rt, name="hook-bot", categories=["reply"], callback_prefixes=["http://127.0.0.1:8080"])
    with rt.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT callback_prefixes FROM agent WHERE name = 'hook-bot'").scalar()
    assert json.loads(stored) == ["http://127.0.0.1:8080/"]  # type: ignore[arg-type]  # scalar() is Optional; the row was just added


def test_agents_add_cli_exits_2_on_an_obfuscated_metadata_prefix(tmp_path: Path) -> None:
    env = make_env(f"sqlite:///{tmp_path / 'countersign.db'}", write_config(tmp_path))
    done = run(
        env, "agents", "add", "hook-bot", "--categories", "reply", "--callback-prefix", "http://2852039166/"
    )
    assert done.returncode == 2
    assert "callback prefix refused" in done.stderr and "token" not in done.stdout


@pytest.mark.parametrize(
    ("prefix", "url"),
    [
        ("http://2852039166/", "http://2852039166/hook"),
        ("http://169.254.169.254/", "http://169.254.169.254/latest/meta-data/"),
        ("http://ops@hooks.example/", "http://ops@hooks.example/hook"),
    ],
)
async def test_a_callback_url_under_a_prefix_stored_before_the_checks_gets_the_out_of_prefix_error_shape(
    api: Api, prefix: str, url: str
) -> None:
    with api.rt.engine.begin() as conn:
        conn.execute(
            sa.update(Agent).where(Agent.name == "support-bot").values(callback_prefixes=json.dumps([prefix]))  # type: ignore[arg-type]
        )
    body = {"category": "reply", "summary": "Reply", "body": "Hello"}
    outside = await api.client.post(
        "/v1/drafts", json=body | {"callback_url": "http://elsewhere.example/"}, headers=api.auth()
    )
    refused = await api.client.post("/v1/drafts", json=body | {"callback_url": url}, headers=api.auth())
    assert refused.status == outside.status == 422
    error, reference = (await refused.json())["error"], (await outside.json())["error"]
    assert error["code"] == reference["code"] and error["field"] == reference["field"] == "callback_url"
    assert "refused" in error["message"]
    with api.rt.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Draft)).scalar_one() == 0


@pytest.mark.parametrize(
    "field",
    [
        {"callback_url": "http://127.0.0.1:8080@169.254.169.254/"},
        {"callback_url": "http://127.0.0.1:80800/hook"},
        {"callback_url": "http://127.0.0.1:8080.evil.example/hook"},
        {"callback_url": "http://127.0.0.1:8080\\@169.254.169.254/"},
        {"callback_url": "HTTP://127.0.0.1:8080/hook"},
        {"executor_url": "http://169.254.169.254/"},
        {"executor": {"url": "http://169.254.169.254/"}},
    ],
)
async def test_an_agent_cannot_choose_or_alter_where_webhooks_go(api: Api, field: dict[str, Any]) -> None:
    body = {"category": "reply", "summary": "Reply", "body": "Hello"} | field
    response = await api.client.post("/v1/drafts", json=body, headers=api.auth())
    assert response.status == 422
    assert (await response.json())["error"]["field"] == next(iter(field))


# Connect time, end to end: the outbox delivers, the guard refuses, the job records why.


def use_resolver(h: Harness, resolver: AbstractResolver) -> None:
    # The app builds its own WebhookJobs; the outbox worker's handlers are its bound methods.
    jobs = h.client.server.app[WORKER].handlers["callback.send"].__self__  # type: ignore[attr-defined]
    assert isinstance(jobs, WebhookJobs) and not jobs._sessions
    jobs.resolver = resolver


async def submit_as(h: Harness, token: str, **fields: Any) -> dict[str, Any]:
    body = {"category": "reply", "summary": "Reply", "body": "Hello"} | fields
    response = await h.client.post("/v1/drafts", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status == 202, await response.text()
    return await response.json()  # type: ignore[no-any-return]


def job_errors(h: Harness, kind: str) -> list[str]:
    with h.rt.engine.connect() as conn:
        rows = conn.execute(
            sa.select(col(OutboxJob.last_error)).where(
                col(OutboxJob.kind) == kind, col(OutboxJob.attempts) > 0
            )
        )
        return [row[0] or "" for row in rows]


async def test_a_callback_whose_name_resolves_to_a_private_address_is_never_sent(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path) as h:
        port = h.callbacks.port
        use_resolver(h, StubResolver({"hooks.agent.example": ["127.0.0.1"], "localhost": ["127.0.0.1"]}))
        bad = agents.add(
            h.rt,
            name="hook-bot",
            categories=["reply"],
            callback_prefixes=[f"http://hooks.agent.example:{port}/"],
        )
        created = await submit_as(h, bad.token, callback_url=f"http://hooks.agent.example:{port}/cb")
        response = await h.client.delete(
            f"/v1/drafts/{created['id']}", headers={"Authorization": f"Bearer {bad.token}"}
        )
        assert response.status == 200
        errors = await eventually(lambda: [e for e in job_errors(h, "callback.send") if e])
        assert "blocked destination hooks.agent.example -> 127.0.0.1 (loopback)" in errors[0]
        # `localhost` as registered by the operator may reach loopback: the same receiver gets this one.
        good = agents.add(
            h.rt, name="local-bot", categories=["reply"], callback_prefixes=[f"http://localhost:{port}/"]
        )
        created = await submit_as(h, good.token, callback_url=f"http://localhost:{port}/ok")
        await h.client.delete(
            f"/v1/drafts/{created['id']}", headers={"Authorization": f"Bearer {good.token}"}
        )
        await eventually(lambda: h.callbacks.requests)
        assert [r.path for r in h.callbacks.requests] == ["/ok"]


PAYOUT = """
[categories.payout]
channel = "C0PAYOUT"
reviewers = ["U0ALICE", "U0BOB"]
ai_review = false
executor = {{ url = "http://billing.internal:{port}/payouts", secret_env = "REFUND_EXECUTOR_SECRET" }}
"""


async def test_an_executor_name_that_rebinds_to_the_metadata_address_is_refused_on_the_next_delivery(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with harness(
        db_url, tmp_path, executor_attempts=1, extra_config=PAYOUT.format(port=receiver.port)
    ) as h:
        stub = StubResolver({"billing.internal": ["127.0.0.1"]})
        use_resolver(h, stub)
        bot = agents.add(h.rt, name="pay-bot", categories=["payout"], callback_prefixes=[])
        auth = {"Authorization": f"Bearer {bot.token}"}

        async def status(draft_id: str, wanted: str) -> dict[str, Any]:
            async def probe() -> dict[str, Any] | None:
                view = await (await h.client.get(f"/v1/drafts/{draft_id}", headers=auth)).json()
                return view if view["status"] == wanted else None

            return await eventually_async(probe)

        first = await submit_as(h, bot.token, category="payout", summary="first")
        await h.click("U0ALICE", ids.APPROVE, first["id"])
        await status(first["id"], "executed")
        assert len(receiver.requests) == 1

        stub.answers["billing.internal"] = ["169.254.169.254"]
        second = await submit_as(h, bot.token, category="payout", summary="second")
        await h.click("U0ALICE", ids.APPROVE, second["id"])
        failed = await status(second["id"], "failed")  # never connected: not "needs_reconciliation"
        assert (
            "blocked destination billing.internal -> 169.254.169.254 (metadata)"
            in failed["execution"]["last_error"]
        )
        assert len(receiver.requests) == 1
        assert stub.asked == ["billing.internal", "billing.internal"]  # one lookup per delivery


async def test_an_executor_redirect_to_an_internal_host_is_not_followed(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with harness(db_url, tmp_path) as h:
        h.executor.script((302, {"Location": f"{receiver.url}/admin/delete-everything"}))
        created = await h.submit()
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        failed = await h.status(created["id"], "failed")
        assert "HTTP 302" in failed["execution"]["last_error"]
        assert len(h.executor.requests) == 1
        assert receiver.requests == []
