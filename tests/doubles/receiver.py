"""A loopback webhook receiver (an executor or an agent's callback endpoint) that records and scripts.

It deduplicates effects on Idempotency-Key the way a well-behaved executor must, and can answer
with scripted statuses, reset the connection after reading the request, or hang.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Script answers with `script(...)`: ints are statuses, "reset" drops the connection, "hang" sleeps."""

    requests: list[Received] = field(default_factory=list)
    effects: dict[str, Any] = field(default_factory=dict)  # Idempotency-Key -> first body seen
    _script: deque[Any] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0

    def script(self, *answers: Any) -> None:
        self._script.extend(answers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.path, dict(request.headers), body))
        answer = self._script.popleft() if self._script else 200
        if answer == "reset":
            # The request arrived (and the effect happened) but the caller never hears back.
            self.effects.setdefault(request.headers.get("Idempotency-Key", ""), body)
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if answer == "hang":
            await asyncio.sleep(3600)
        raw: bytes | None = None  # (status, headers, raw body) answers with exactly those bytes
        if isinstance(answer, tuple):
            status, headers, *rest = answer
            raw = rest[0] if rest else None
        else:
            status, headers = int(answer), {}
        if 200 <= status < 300:
            self.effects.setdefault(request.headers.get("Idempotency-Key", ""), body)
        if raw is not None:
            return web.Response(status=status, headers=headers, body=raw)
        return web.json_response({"status": status}, status=status, headers=headers)
