"""The executor double that runs in its own process: `python -m tests.doubles.executor_process --port 0`.

It records every POST (Idempotency-Key, webhook-id, headers, body, wall-clock arrival and answer
times) and answers as scripted over /_receiver/* (see `tests.processes.ExecutorProcess`): a status,
a Retry-After, a delay, or holding the request until the test releases it. It prints
`READY <port>` once listening and stops on SIGTERM or when its stdin closes.

It imports nothing but aiohttp: the multi-process tests start one per cluster, and importing the
server's modules here tripled its start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from aiohttp import web

from tests.doubles.lifetime import stop_requested


class _Receiver:
    """Records every POST and answers per the script; see ExecutorProcess.script."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: deque[dict[str, Any]] = deque()
        self.default: dict[str, Any] = {"status": 200}
        self.released = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/_receiver/requests", self._requests)
        app.router.add_post("/_receiver/script", self._script)
        app.router.add_post("/_receiver/release", self._release)
        app.router.add_post("/{tail:.*}", self._handle)
        return app

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def _script(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.answers.extend(spec.get("answers", []))
        if "default" in spec:
            self.default = spec["default"]
        return web.json_response({"ok": True})

    async def _release(self, request: web.Request) -> web.Response:
        self.released.set()
        return web.json_response({"ok": True})

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        record: dict[str, Any] = {
            "path": request.path,
            "key": request.headers.get("Idempotency-Key"),
            "webhook_id": request.headers.get("webhook-id"),
            "headers": dict(request.headers),
            "body": body.decode(errors="replace"),
            "arrived": time.time(),
            "answered": None,
            "status": None,
        }
        self.requests.append(record)
        answer = self.answers.popleft() if self.answers else self.default
        if answer.get("hold"):
            # In flight until the test releases it; bounded below Countersign's 10 s webhook timeout.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), float(answer.get("hold_max", 8.0)))
        if answer.get("delay"):
            await asyncio.sleep(float(answer["delay"]))
        status = int(answer.get("status", 200))
        headers = {"Retry-After": str(answer["retry_after"])} if answer.get("retry_after") else {}
        record["answered"], record["status"] = time.time(), status
        return web.json_response({"status": status}, status=status, headers=headers)


async def _serve_receiver(port: int) -> None:
    runner = web.AppRunner(_Receiver().app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = stop_requested()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.doubles.executor_process", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed after READY)")
    args = parser.parse_args(argv)
    asyncio.run(_serve_receiver(args.port))


if __name__ == "__main__":
    main()
