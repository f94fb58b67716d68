"""The double in another OS process: serve_forever, and SlackDoubleProcess driving it over /_double/*."""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from tests.doubles.lifetime import stop_requested
from tests.doubles.slack_api.calls import Call
from tests.doubles.slack_api.server import SlackDouble
from tests.doubles.slack_api.workspace import DEFAULT_BOT_TOKEN, JSON

REPO_ROOT = Path(__file__).resolve().parents[3]


def serve_forever(
    port: int,
    bot_token: str = DEFAULT_BOT_TOKEN,
    *,
    config: Mapping[str, Any] | None = None,
    exit_on_stdin_eof: bool = False,
) -> None:
    """Run a double until SIGTERM/SIGINT; prints ``READY <port>`` once it accepts connections.

    ``exit_on_stdin_eof`` also stops it when stdin closes, so a parent that dies without cleaning
    up (killed test run) does not leave a server holding its port.
    """
    asyncio.run(_serve(port, bot_token, dict(config or {}), exit_on_stdin_eof))


async def _serve(port: int, bot_token: str, config: JSON, exit_on_stdin_eof: bool) -> None:
    double = SlackDouble(bot_token=bot_token)
    for attr in ("latency", "enforce_channel_rate", "socket_mode_url", "app_token"):
        if attr in config:
            setattr(double, attr, config.pop(attr))
    double.configure(**config)
    await double.start(port)
    stop = stop_requested(watch_stdin=exit_on_stdin_eof)
    print(f"READY {double.port}", flush=True)
    await stop.wait()
    await double.stop()


class SlackDoubleProcess:
    """A SlackDouble in a child process, driven over its ``/_double/*`` control endpoints.

    ``with SlackDoubleProcess(users=...) as slack:`` then hand ``slack.base_url`` to the product's
    subprocesses. Control calls are blocking (urllib); the server lives in another process, so
    calling them from an async test does not deadlock.
    """

    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        port: int = 0,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        channels: Iterable[str] | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.bot_token = bot_token
        self._requested_port = port
        self._config: JSON = {
            "users": dict(users or {}),
            "usergroups": {k: list(v) for k, v in (usergroups or {}).items()},
            "channels": None if channels is None else sorted(channels),
        }
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "tests.doubles.slack_api",
            "--port",
            str(self._requested_port),
            "--bot-token",
            self.bot_token,
            "--config",
            json.dumps(self._config),
            "--exit-on-stdin-eof",
        ]
        self._proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.05)
            if ready:
                line = self._proc.stdout.readline()
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    return
                if not line:
                    break
        self.stop()
        raise RuntimeError("Slack double subprocess did not report READY")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        self._proc = None

    def __enter__(self) -> SlackDoubleProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/"

    @property
    def response_url_base(self) -> str:
        return f"{self.origin}/actions/"

    def calls(self, method: str | None = None) -> list[Call]:
        query = "?" + urllib.parse.urlencode({"method": method}) if method else ""
        return [Call.from_json(c) for c in self._get(f"/_double/calls{query}")]

    def messages(self) -> list[JSON]:
        return list(self._get("/_double/messages"))

    def responses(self) -> list[JSON]:
        return list(self._get("/_double/responses"))

    def fail(
        self,
        method: str,
        *,
        status: int | Literal["timeout"] = 429,
        times: int = 1,
        retry_after: int | None = 1,
        error: str | None = None,
        delay: float = 0.0,
        channel: str | None = None,
    ) -> None:
        spec = {
            "method": method,
            "status": status,
            "times": times,
            "retry_after": retry_after,
            "delay": delay,
            "channel": channel,
        }
        self._post("/_double/fail", {**spec, "error": error})

    def reset(self) -> None:
        self._post("/_double/reset", {})

    def configure(self, **spec: Any) -> None:
        """``SlackDouble.configure`` keywords plus latency, enforce_channel_rate, socket_mode_url."""
        if "channels" in spec and spec["channels"] is not None:
            spec["channels"] = sorted(spec["channels"])
        self._post("/_double/config", spec)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.origin + path, timeout=10) as resp:
            return json.loads(resp.read())

    def _post(self, path: str, body: JSON) -> Any:
        req = urllib.request.Request(
            self.origin + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
