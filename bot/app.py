"""create_app(settings) → the aiohttp Application: agent API, Slack endpoint, health, workers.

Nothing is built at import time; the CLI and the tests call create_app with their settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from slack_sdk.signature import SignatureVerifier

from bot import decisions, digest, logs, retention, slack, threads, watchdogs
from bot import slack_app as slack_app_module
from bot.agents import TokenCache
from bot.aireview import AIReviewJobs
from bot.control import Control
from bot.control.switches import apply_config_modes
from bot.dbclock import DatabaseClock
from bot.intake import IntakeWriter
from bot.metrics import Metrics
from bot.outbox import Worker
from bot.ratelimit import RateLimiter
from bot.reviewer import ClaudeReviewer
from bot.risk.workers import RuleWorkers
from bot.runtime import Clock, Runtime, utcnow
from bot.settings import Settings
from bot.webhooks import WebhookJobs
from handlers import agent_api
from storage import migrate
from storage.db import create_db_engine, reader

log = logging.getLogger(__name__)

WORKERS: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("workers", list)
WORKER: web.AppKey[Worker] = web.AppKey("worker", Worker)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = await threads.read(request.app[METRICS].render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@dataclass
class Options:
    """Knobs the tests and the CLI turn; production uses the defaults."""

    clock: Clock = utcnow
    run_workers: bool = True
    migrate: bool = True
    outbox_poll: float = 0.5
    schedule_every: float = 5.0
    backoff_base: float = 1.0
    executor_attempts: int = 6
    lease_seconds: float = 60.0
    slack_timeout: int = 10  # seconds for one Slack Web API call (tests that time out calls lower it)
    extra_tasks: list[str] = field(default_factory=list)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@dataclass
class SchemaCheck:
    """Whether the database's migrations are this code's. Once they are, they stay so for this
    process's life (nothing downgrades a database under a running server), so /readyz stops
    asking Alembic, which costs a query and logs two lines each time."""

    current: bool = False


SCHEMA: web.AppKey[SchemaCheck] = web.AppKey("schema", SchemaCheck)


async def readyz(request: web.Request) -> web.Response:
    rt, schema = request.app[agent_api.RUNTIME], request.app[SCHEMA]

    def check() -> bool:
        with reader(rt.engine).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        if not schema.current:
            schema.current = migrate.is_current(rt.engine)
        return schema.current

    try:
        current = await threads.read(check)
    except Exception as exc:
        return web.json_response({"ok": False, "database": f"unreachable: {type(exc).__name__}"}, status=503)
    if not current:
        return web.json_response({"ok": False, "database": "migrations pending"}, status=503)
    return web.json_response({"ok": True})


def build_runtime(settings: Settings, options: Options) -> Runtime:
    engine = create_db_engine(settings.database_url)
    if options.migrate:
        migrate.upgrade(engine)
    # Production keeps the database's time, so replicas agree on it (AC-09); tests pass a clock.
    clock = DatabaseClock.measured(engine) if options.clock is utcnow else options.clock
    return Runtime(
        engine=engine,
        config=settings.config,
        clock=clock,
        executor_attempts=options.executor_attempts,
    )


async def schedules(rt: Runtime, control: Control, every: float, stop: asyncio.Event, worker: str) -> None:
    """Timers every replica runs; each effect is a conditional transition, so it happens once."""
    pruned_at: datetime | None = None
    while not stop.is_set():
        try:
            if isinstance(rt.clock, DatabaseClock):
                await asyncio.to_thread(rt.clock.measure)
            await asyncio.to_thread(decisions.expire_due, rt)
            await asyncio.to_thread(control.revert_lapsed)
            await asyncio.to_thread(watchdogs.check_heartbeats, rt)
            await asyncio.to_thread(watchdogs.check_backlog, rt)
            await asyncio.to_thread(digest.claim_due, rt, worker=worker)
            await asyncio.to_thread(digest.claim_missed, rt, worker=worker)
            if retention.due(pruned_at, rt.clock()):
                pruned_at = rt.clock()  # a failing sweep waits for its next turn, not the next tick
                await asyncio.to_thread(retention.prune, rt)
        except Exception:
            log.exception("scheduled work failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def create_app(settings: Settings, options: Options | None = None) -> web.Application:
    """Build the whole server for `settings`; background workers start with the app."""
    options = options or Options()
    rt = build_runtime(settings, options)
    apply_config_modes(rt)
    config = settings.config
    app = web.Application(
        middlewares=[logs.request_ids, agent_api.errors_middleware],
        client_max_size=max(config.max_body_bytes, 1024 * 1024),
    )
    app[agent_api.RUNTIME] = rt
    app[agent_api.TOKENS] = TokenCache()
    writer = app[agent_api.INTAKE] = IntakeWriter(rt)
    rules = app[agent_api.RULES] = RuleWorkers(config.risk_workers)
    app[agent_api.LIMITER] = RateLimiter(
        capacity=config.agent_rate_limit.count, per_seconds=config.agent_rate_limit.per.total_seconds()
    )
    app.router.add_get("/healthz", healthz)
    app[SCHEMA] = SchemaCheck()
    app.router.add_get("/readyz", readyz)
    agent_api.register(app)

    client = slack.make_client(settings, timeout=options.slack_timeout)
    metrics = Metrics()
    metrics.watch(rt)
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_endpoint)
    denials = slack_app_module.DenialLog()
    slack_app = slack_app_module.build(settings, rt, client, metrics, denials)
    app[slack_app_module.SLACK_APP] = slack_app
    # Socket Mode needs no signing secret; without one, POST /slack/events refuses every request
    # (nothing can sign for a secret nobody holds).
    secret = settings.slack_signing_secret or secrets.token_hex(32)
    app[slack_app_module.VERIFIER] = SignatureVerifier(secret)
    app[slack_app_module.DENIALS] = denials
    app.router.add_post("/slack/events", slack_app_module.slack_events)

    slack_jobs = slack.SlackJobs(rt=rt, client=client)
    webhook_jobs = WebhookJobs(rt)
    reviewer = ClaudeReviewer.from_settings(settings, clock=options.clock)
    metrics.reviewer_available.set_function(lambda: float(reviewer.available()))
    ai_jobs = AIReviewJobs(rt, reviewer, metrics)
    worker = Worker(
        rt=rt,
        handlers=slack_jobs.handlers() | webhook_jobs.handlers() | ai_jobs.handlers(),
        give_up={"slack.render": slack_jobs.render_gave_up} | webhook_jobs.give_up(),
        poll_interval=options.outbox_poll,
        backoff_base=options.backoff_base,
        lease=timedelta(seconds=options.lease_seconds),
        metrics=metrics,
    )
    rt.wake_outbox = worker.wake
    app[WORKER] = worker
    control = Control(rt=rt, directory=slack.Directory(client=client))

    async def background(app: web.Application) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        stop = asyncio.Event()
        threads.use_work_pool(asyncio.get_running_loop())
        await rules.start()
        intake_task = asyncio.create_task(writer.run(), name="intake")
        if options.run_workers:
            tasks.append(asyncio.create_task(worker.run(), name="outbox"))
            tasks.append(
                asyncio.create_task(
                    schedules(rt, control, options.schedule_every, stop, worker.worker_id), name="schedules"
                )
            )
        app[WORKERS] = tasks
        yield
        # Let work in hand finish (its database threads cannot be cancelled), then cancel the rest.
        # Posts still waiting for their channel's pace go back to the queue instead.
        worker.stop()
        slack_jobs.pacer.stop()
        stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        intake_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await intake_task
        await webhook_jobs.close()
        await rules.close()
        await reviewer.aclose()
        rt.engine.dispose()

    app.cleanup_ctx.append(background)
    return app
