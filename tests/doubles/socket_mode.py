"""A small websocket double of Slack's Socket Mode server: push envelopes, get the client's acks back.

Reach it either through ``SlackDouble(socket_mode_url=double.url)`` (the client's
apps.connections.open returns this URL, as Slack does) or by setting ``handler.client.wss_uri``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import WSMsgType, web

JSON = dict[str, Any]


class SocketModeDouble:
    """``async with SocketModeDouble() as sock:``; ``sock.url`` is ``ws://127.0.0.1:PORT/link``."""

    def __init__(self, *, app_id: str = "A0001") -> None:
        self.app_id = app_id
        # Everything clients sent (acks and anything else), in arrival order.
        self.received: list[JSON] = []
        self.connections_opened = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._pending: dict[str, asyncio.Future[JSON]] = {}
        self._connected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/link", self._serve_link)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SocketModeDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/link"

    @property
    def connected(self) -> bool:
        return any(not ws.closed for ws in self._sockets)

    async def wait_connected(self, within: float = 5.0) -> None:
        await asyncio.wait_for(self._connected.wait(), within)

    async def send_envelope(
        self,
        type_: str,
        payload: JSON,
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        envelope_id: str | None = None,
        ack_within: float = 5.0,
    ) -> JSON:
        """Send one envelope (§2.7) and return the client's ack ``{"envelope_id": ..., "payload"?: ...}``.

        ``type_`` is ``events_api``, ``interactive`` or ``slash_commands``. Raises TimeoutError
        when no ack arrives within ``ack_within`` seconds, which is how Slack sees a missed 3 s deadline.
        """
        envelope: JSON = {
            "envelope_id": envelope_id or str(uuid.uuid4()),
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
            "payload": payload,
        }
        if retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason or "timeout"
        ack: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._pending[envelope["envelope_id"]] = ack
        try:
            await self._live_socket().send_str(json.dumps(envelope))
            return await asyncio.wait_for(ack, ack_within)
        finally:
            self._pending.pop(envelope["envelope_id"], None)

    async def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask the client to reconnect, as Slack does every few hours."""
        await self._live_socket().send_str(json.dumps({"type": "disconnect", "reason": reason}))

    def _live_socket(self) -> web.WebSocketResponse:
        # With several connections Slack picks any one; the newest is the one a test just opened.
        for ws in reversed(self._sockets):
            if not ws.closed:
                return ws
        raise RuntimeError("no Socket Mode client is connected")

    async def _serve_link(self, request: web.Request) -> web.WebSocketResponse:
        # autoping answers slack_sdk's "sdk-ping-pong" pings; without pongs it reconnects.
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connections_opened += 1
        hello = {
            "type": "hello",
            "num_connections": sum(1 for s in self._sockets if not s.closed),
            "debug_info": {"host": "applink-double", "approximate_connection_time": 18060},
            "connection_info": {"app_id": self.app_id},
        }
        await ws.send_str(json.dumps(hello))
        self._connected.set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                self.received.append(data)
                waiter = self._pending.get(str(data.get("envelope_id")))
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
        finally:
            self._sockets.remove(ws)
            if not self.connected:
                self._connected.clear()
        return ws
