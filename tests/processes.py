"""Real OS processes for the multi-process tests (and bench/ack.py): servers, Slack, an executor.

- `ServerProcess`: `python -m bot serve` on a free port, health-checked, stopped, killed, restarted.
- `ExecutorProcess`: a webhook receiver playing the executor in its own process. It records every
  request (Idempotency-Key, webhook-id, body, wall-clock arrival and answer times) and answers as
  scripted: a status, a Retry-After, or holding the request until the test releases it.
  `python -m tests.doubles.executor_process --port 0` runs one by hand.
- `fire`: POST pre-signed requests from several client processes, all released at one instant.
- `Cluster`: the Slack double process, an executor process and any number of servers on one
  database, plus the agent-side and Slack-side moves the tests make (submit, click, /agent).

Cleanup does not depend on the test passing: `Cluster.running` stops every child in a `finally`
(SIGTERM, then SIGKILL after a grace period), and on Linux each child asks the kernel to SIGKILL it
if the process that started it dies (PR_SET_PDEATHSIG), so even a killed pytest leaves no server
holding a port or a database.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import secrets
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot import agents
from bot.runtime import Runtime
from bot.settings import load_settings
from handlers import ids
from storage import migrate
from storage.db import create_db_engine, normalize_url
from tests.conftest import SIGNING_SECRET, make_env, write_config
from tests.doubles import signing
from tests.doubles.slack_api import SlackDoubleProcess

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")

# The workspace the Slack double knows (users.info answers); reviewers of `refund` in the test config.
USERS: dict[str, dict[str, Any]] = {
    "U0ALICE": {"name": "alice"},
    "U0BOB": {"name": "bob"},
    "U0CAROL": {"name": "carol"},
    "U0ADMIN": {"name": "admin", "is_admin": True},
    "U0OUT": {"name": "outsider"},
    "U0GUEST": {"name": "guest", "is_restricted": True},
    "U0GONE": {"name": "gone", "deleted": True},
}
REVIEWERS = ("U0ALICE", "U0BOB", "U0ADMIN")

# prctl(PR_SET_PDEATHSIG, SIGKILL), check the parent is still the one that spawned us, then exec.
_ORPHAN_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def guarded(argv: Sequence[str]) -> list[str]:
    """`argv` (starting with an absolute executable) run so that it dies with this process (Linux)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _ORPHAN_GUARD, str(os.getpid()), *argv]


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without Slack/Countersign settings, plus `env`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "COUNTERSIGN_"))}
    return inherited | dict(env) | {"COUNTERSIGN_LOG_LEVEL": env.get("COUNTERSIGN_LOG_LEVEL", "WARNING")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 15.0,
    what: str = "condition",
    state: Callable[[], object] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds saying `what`
    (and what `state()` shows then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; state: {state()!r}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{seen}")
        time.sleep(0.02)


def _stop(process: subprocess.Popen[Any] | None, *, grace: float) -> None:
    if process is None or process.poll() is not None:
        return
    if grace <= 0:
        process.kill()
    else:
        process.terminate()
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def http(
    method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, bytes]:
    """One blocking HTTP request; (status, body), whatever the status."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# -- Countersign servers -----------------------------------------------------------------------


class ServerProcess:
    """`python -m bot serve` in its own process; logs go to `log` (appended across restarts)."""

    def __init__(self, name: str, env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.env = dict(env)
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the process without waiting for it to answer (see `wait_healthy`)."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} is running"
        self.port = free_port()
        argv = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                guarded(argv), env=child_env(self.env), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise AssertionError(f"{self.name} did not become healthy:\n{self.tail()}")

    def start(self) -> ServerProcess:
        self.spawn()
        self.wait_healthy()
        return self

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; `grace=0` is kill -9 at once."""
        _stop(self.process, grace=grace)

    def restart(self, *, kill: bool = False, env: Mapping[str, str] | None = None) -> ServerProcess:
        """Stop (or kill -9) and start again on a new port, optionally with another environment."""
        self.stop(grace=0 if kill else 10.0)
        if env is not None:
            self.env = dict(env)
        return self.start()

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        return http("POST", self.url + path, body=body, headers=headers)


# -- the executor: a webhook receiver in its own process -----------------------------------------


class ExecutorProcess:
    """The executor (a webhook receiver) in a child process, driven over /_receiver/* endpoints."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[str] | None = None

    def spawn(self) -> None:
        argv = [sys.executable, "-m", "tests.doubles.executor_process", "--port", "0"]
        self.process = subprocess.Popen(
            guarded(argv), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.05)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    return
                if not line:
                    break
        self.stop()
        raise AssertionError("the executor process did not report READY")

    def start(self) -> ExecutorProcess:
        self.spawn()
        self.wait_ready()
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        _stop(self.process, grace=5.0)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *answers: Mapping[str, Any], default: Mapping[str, Any] | None = None) -> None:
        """Queue answers for the next requests, in arrival order; then `default` (200 at first).

        An answer is `{"status": 503, "retry_after": 4}`, `{"hold": True}` (wait for `release()`,
        then answer `status`, default 200), or `{"delay": seconds}`.
        """
        spec: dict[str, Any] = {"answers": [dict(a) for a in answers]}
        if default is not None:
            spec["default"] = dict(default)
        self._post("/_receiver/script", spec)

    def release(self) -> None:
        """Answer every held request (and hold no later one)."""
        self._post("/_receiver/release", {})

    def requests(self) -> list[dict[str, Any]]:
        status, body = http("GET", self.url + "/_receiver/requests")
        assert status == 200, body
        return list(json.loads(body))

    def effects(self) -> dict[str, int]:
        """Idempotency-Key → number of 2xx answers it got (an executor deduplicating on the key acts once)."""
        counts: dict[str, int] = {}
        for request in self.requests():
            if request["status"] is not None and 200 <= request["status"] < 300:
                counts[request["key"]] = counts.get(request["key"], 0) + 1
        return counts

    def _post(self, path: str, spec: Mapping[str, Any]) -> None:
        status, body = http(
            "POST",
            self.url + path,
            body=json.dumps(spec).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 200, body


# -- many clients at once --------------------------------------------------------------------------

# A client process: one thread per request, all released at a wall-clock instant shared by every
# client process, then a barrier; prints [[status, body], ...] in the order it was given.
_CLIENT = r"""
import base64, json, sys, threading, time, urllib.error, urllib.request

spec = json.load(sys.stdin)
requests = spec["requests"]
results = [None] * len(requests)
barrier = threading.Barrier(len(requests))


def send(i, r):
    request = urllib.request.Request(
        r["url"], data=base64.b64decode(r["body"]), method="POST", headers=r["headers"]
    )
    barrier.wait()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            results[i] = [response.status, response.read().decode(errors="replace")]
    except urllib.error.HTTPError as error:
        results[i] = [error.code, error.read().decode(errors="replace")]
    except Exception as error:
        results[i] = [0, repr(error)]


threads = [threading.Thread(target=send, args=(i, r)) for i, r in enumerate(requests)]
while time.time() < spec["start_at"]:
    time.sleep(0.001)
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(results))
"""


def fire(
    requests: Sequence[tuple[str, signing.SignedRequest]], *, processes: int = 4, lead: float = 1.5
) -> list[tuple[int, str]]:
    """POST each (url, signed request) from `processes` client processes at the same instant.

    Requests are dealt round-robin to the processes; the answers come back in the given order.
    """
    processes = max(1, min(processes, len(requests)))
    start_at = time.time() + lead
    shares: list[list[int]] = [list(range(n, len(requests), processes)) for n in range(processes)]
    clients: list[subprocess.Popen[str]] = []
    results: list[tuple[int, str] | None] = [None] * len(requests)
    try:
        for share in shares:
            spec = {
                "start_at": start_at,
                "requests": [
                    {
                        "url": requests[i][0],
                        "body": base64.b64encode(requests[i][1].body).decode(),
                        "headers": requests[i][1].headers,
                    }
                    for i in share
                ],
            }
            client = subprocess.Popen(
                guarded([sys.executable, "-c", _CLIENT]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            clients.append(client)
            assert client.stdin is not None
            client.stdin.write(json.dumps(spec))
            client.stdin.close()
        for client, share in zip(clients, shares, strict=True):
            assert client.stdout is not None and client.stderr is not None
            out = client.stdout.read()
            err = client.stderr.read()
            client.wait(timeout=120)
            assert client.returncode == 0, err
            for i, (status, text) in zip(share, json.loads(out), strict=True):
                results[i] = (int(status), str(text))
    finally:
        for client in clients:
            _stop(client, grace=0)
            for pipe in (client.stdout, client.stderr):
                if pipe is not None:
                    pipe.close()
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


# -- a whole deployment --------------------------------------------------------------------------


@dataclass
class Cluster:
    """A Slack double process, an executor process and Countersign servers sharing one database."""

    db_url: str
    tmp_path: Path
    slack: SlackDoubleProcess
    executor: ExecutorProcess
    config: Path
    runtime: Runtime
    reader: Engine
    servers: list[ServerProcess] = field(default_factory=list)
    _responses: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        db_url: str,
        tmp_path: Path,
        *,
        extra_config: str = "",
        edit_config: Callable[[str], str] | None = None,
        show_logs: bool = True,
    ) -> Iterator[Cluster]:
        """Start the doubles, write the config (executor URL filled in), migrate; stop it all after.

        `show_logs` prints the tail of each server's log at the end, which pytest shows with a
        failure report (it is the captured output of the fixture's teardown).
        """
        executor = ExecutorProcess()
        slack = SlackDoubleProcess(users=USERS)
        engines: list[Engine] = []
        cluster: Cluster | None = None
        try:
            executor.spawn()
            slack.start()
            executor.wait_ready()
            config = write_config(
                tmp_path, executor_url=executor.url + "/refunds", rate="10000/s", extra=extra_config
            )
            if edit_config is not None:
                config.write_text(edit_config(config.read_text()))
            settings = load_settings(make_env(db_url, config, slack.base_url))
            engine = create_db_engine(settings.database_url)
            engines.append(engine)
            # Migrate once here, so servers started together never race to create the schema.
            migrate.upgrade(engine)
            # Reads outside any server-style transaction: on SQLite a plain pysqlite connection reads
            # a WAL snapshot and takes no write lock.
            reader = sa.create_engine(normalize_url(db_url))
            engines.append(reader)
            cluster = cls(
                db_url=db_url,
                tmp_path=tmp_path,
                slack=slack,
                executor=executor,
                config=config,
                runtime=Runtime(engine=engine, config=settings.config),
                reader=reader,
            )
            yield cluster
        finally:
            if cluster is not None:
                cluster.stop_servers()
                for server in cluster.servers if show_logs else ():
                    print(f"----- {server.name} log (tail) -----\n{server.tail()}")
            slack.stop()
            executor.stop()
            for engine in engines:
                engine.dispose()

    # -- processes

    def env(self, config: Path | None = None) -> dict[str, str]:
        return make_env(self.db_url, config or self.config, self.slack.base_url)

    def start_servers(self, count: int, *, config: Path | None = None) -> list[ServerProcess]:
        """Start `count` servers at the same time and wait until every one answers /healthz."""
        started = []
        for _ in range(count):
            name = f"server-{len(self.servers)}"
            server = ServerProcess(name, self.env(config), self.tmp_path / f"{name}.log")
            self.servers.append(server)
            server.spawn()
            started.append(server)
        for server in started:
            server.wait_healthy()
        return started

    def stop_servers(self, grace: float = 5.0) -> None:
        """SIGTERM every server at once, then SIGKILL what is still running after `grace` seconds."""
        running = [s for s in self.servers if s.process is not None and s.process.poll() is None]
        for server in running:
            assert server.process is not None
            server.process.terminate()
        deadline = time.monotonic() + grace
        for server in running:
            assert server.process is not None
            try:
                server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()

    # -- the agent side

    def add_agent(self, name: str = "support-bot", categories: Sequence[str] = ("refund", "reply")) -> str:
        return agents.add(self.runtime, name=name, categories=list(categories), callback_prefixes=[]).token

    def submit(self, server: ServerProcess, token: str, **fields: Any) -> dict[str, Any]:
        """POST /v1/drafts (a refund of 30.00 unless `fields` say otherwise; None drops a field)."""
        amount = fields.get("amount", "30.00")
        body = {
            "category": "refund",
            "summary": "Refund order 1042",
            "body": f"Hi Dana, I've refunded ${amount} to your card.",
            "context": "My order 1042 arrived broken, I want a refund please.",
            "amount": amount,
            "idempotency_key": secrets.token_hex(8),
        } | fields
        body = {k: v for k, v in body.items() if v is not None}
        status, raw = server.post(
            "/v1/drafts",
            json.dumps(body).encode(),
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert status == 202, raw
        return dict(json.loads(raw))

    def heartbeat(self, server: ServerProcess, token: str) -> None:
        status, raw = server.post("/v1/heartbeat", b"", {"Authorization": f"Bearer {token}"})
        assert status == 200, raw

    # -- the Slack side

    def response_path(self, kind: str = "actions") -> str:
        """A response_url path no other request uses, so each answer can be traced to its request."""
        return f"/{kind}/T0001/{next(self._responses)}/{secrets.token_hex(6)}"

    def approve_click(self, user: str, draft_id: str, version: int = 1) -> tuple[signing.SignedRequest, str]:
        """A signed Approve click of `user` on a draft, and the response_url path its answer goes to."""
        path = self.response_path()
        request = signing.block_action(
            SIGNING_SECRET,
            user_id=user,
            action_id=ids.APPROVE,
            value=f"{draft_id}:{version}",
            block_id=f"draft:{draft_id}",
            channel_id="C0REFUNDS",
            response_url=self.slack.origin + path,
        )
        return request, path

    def command_request(self, user: str, text: str) -> tuple[signing.SignedRequest, str]:
        path = self.response_path("commands")
        request = signing.slash_command(
            SIGNING_SECRET, user_id=user, text=text, response_url=self.slack.origin + path
        )
        return request, path

    def command(self, server: ServerProcess, user: str, text: str) -> dict[str, Any]:
        """Run `/agent <text>` as `user`; the response_url post that answered it (text, wall time)."""
        request, path = self.command_request(user, text)
        status, raw = server.post("/slack/events", request.body, request.headers)
        assert status == 200, raw
        return self.responses([path])[path]

    def responses(self, paths: Sequence[str], timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        """The response_url post of each path (waiting for all): {"text", "wall"} by path."""
        wanted = set(paths)

        def collect() -> dict[str, dict[str, Any]] | None:
            found = {
                r["path"]: {"text": str((r.get("json") or {}).get("text")), "wall": float(r["wall"])}
                for r in self.slack.responses()
                if r["path"] in wanted
            }
            return found if len(found) == len(wanted) else None

        return wait_for(collect, timeout=timeout, what=f"{len(wanted)} response_url answers")

    # -- the database

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.reader.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params).all()]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.reader.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()
