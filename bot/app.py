"""create_app(settings) → the aiohttp Application: agent API, Slack endpoint, health, workers.

Nothing is built at import time; the CLI and the tests call create_app with their settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from aiohttp import web

from bot.outbox import Worker
from bot.ratelimit import RateLimiter
from bot.runtime import Clock, Runtime, utcnow
from bot.settings import Settings
from handlers import agent_api
from storage import migrate
from storage.db import create_db_engine

log = logging.getLogger(__name__)

WORKERS: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("workers", list)


@dataclass
class Options:
    """Knobs the tests and the CLI turn; production uses the defaults."""

    clock: Clock = utcnow
    run_workers: bool = True
    migrate: bool = True
    outbox_poll: float = 0.5
    extra_tasks: list[str] = field(default_factory=list)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    rt = request.app[agent_api.RUNTIME]

    def check() -> bool:
        with rt.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return migrate.is_current(rt.engine)

    try:
        current = await asyncio.to_thread(check)
    except Exception as exc:
        return web.json_response({"ok": False, "database": f"unreachable: {type(exc).__name__}"}, status=503)
    if not current:
        return web.json_response({"ok": False, "database": "migrations pending"}, status=503)
    return web.json_response({"ok": True})


def build_runtime(settings: Settings, options: Options) -> Runtime:
    engine = create_db_engine(settings.database_url)
    if options.migrate:
        migrate.upgrade(engine)
    return Runtime(engine=engine, config=settings.config, clock=options.clock)


def create_app(settings: Settings, options: Options | None = None) -> web.Application:
    """Build the whole server for `settings`; background workers start with the app."""
    options = options or Options()
    rt = build_runtime(settings, options)
    config = settings.config
    app = web.Application(
        middlewares=[agent_api.errors_middleware], client_max_size=max(config.max_body_bytes, 1024 * 1024)
    )
    app[agent_api.RUNTIME] = rt
    app[agent_api.LIMITER] = RateLimiter(
        capacity=config.agent_rate_limit.count, per_seconds=config.agent_rate_limit.per.total_seconds()
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    agent_api.register(app)

    worker = Worker(rt=rt, handlers={}, poll_interval=options.outbox_poll)
    rt.wake_outbox = worker.wake

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        if options.run_workers:
            tasks.append(asyncio.create_task(worker.run(), name="outbox"))
        app[WORKERS] = tasks
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        rt.engine.dispose()

    app.cleanup_ctx.append(background)
    return app
