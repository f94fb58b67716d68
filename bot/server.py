"""Running the server process: the aiohttp app, plus a Socket Mode connection when asked."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from pathlib import Path
from typing import IO

from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from sqlalchemy.engine import make_url

from bot.app import Options, create_app
from bot.settings import Settings
from bot.slack_app import SLACK_APP

log = logging.getLogger(__name__)


def run(settings: Settings, *, host: str, port: int, socket_mode: bool) -> None:
    """Serve until SIGINT/SIGTERM."""
    lock = hold_sqlite_lock(settings.database_url)
    # How long a claimed outbox job stays with this process before another may take it over.
    options = Options(lease_seconds=float(os.environ.get("COUNTERSIGN_OUTBOX_LEASE_SECONDS", "60")))
    try:
        asyncio.run(serve(settings, host=host, port=port, socket_mode=socket_mode, options=options))
    finally:
        if lock is not None:
            lock.close()


class SharedSQLite(Exception):
    """Another live server already uses this SQLite file."""


def hold_sqlite_lock(database_url: str) -> IO[bytes] | None:
    """SQLite serves one process on one host: take an exclusive lock beside the database file.

    The lock lives as long as the returned file stays open (the process); the OS drops it on
    any exit, kill -9 included. COUNTERSIGN_ALLOW_SHARED_SQLITE=1 lifts the guard for tests
    that race several processes on one file on purpose.
    """
    if not database_url.startswith("sqlite") or os.environ.get("COUNTERSIGN_ALLOW_SHARED_SQLITE") == "1":
        return None
    # The file itself, however the URL spells it (a symlink, a relative path, ?timeout=…).
    path = Path(make_url(database_url).database or "countersign.db").resolve()
    handle = open(f"{path}.serve-lock", "ab")  # noqa: SIM115  (held open on purpose)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SharedSQLite(
            f"another countersign server is using {path}: SQLite is for one process on one host."
            " Run several replicas on PostgreSQL (COUNTERSIGN_DATABASE_URL=postgresql://…)."
        ) from None
    return handle


async def serve(settings: Settings, *, host: str, port: int, socket_mode: bool, options: Options) -> None:
    app = create_app(settings, options)
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
