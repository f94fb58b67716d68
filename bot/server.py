"""Running the server process: the aiohttp app, plus a Socket Mode connection when asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from bot.app import create_app
from bot.settings import Settings
from bot.slack_app import SLACK_APP

log = logging.getLogger(__name__)


def run(settings: Settings, *, host: str, port: int, socket_mode: bool) -> None:
    """Serve until SIGINT/SIGTERM."""
    asyncio.run(serve(settings, host=host, port=port, socket_mode=socket_mode))


async def serve(settings: Settings, *, host: str, port: int, socket_mode: bool) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    handler = None
    if socket_mode:
        # Slack's requests arrive over the websocket, unsigned; the agent API stays on HTTP.
        handler = AsyncSocketModeHandler(app[SLACK_APP], app_token=settings.slack_app_token)
        await handler.connect_async()  # type: ignore[no-untyped-call]
    log.info("countersign listening on http://%s:%s%s", host, port, " (+ Socket Mode)" if socket_mode else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if handler is not None:
        await handler.close_async()  # type: ignore[no-untyped-call]
    await runner.cleanup()
