"""The Bolt AsyncApp inside the server: HTTP mode at POST /slack/events, or Socket Mode."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.signature import Clock, SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

import handlers
from bot import audit
from bot.control import Control
from bot.metrics import Metrics
from bot.review import Reviewing
from bot.runtime import Runtime
from bot.settings import Settings
from bot.slack import Directory
from handlers.agent_api import RUNTIME
from handlers.context import Services, arrived
from storage.db import transaction

log = logging.getLogger(__name__)
SLACK_APP: web.AppKey[AsyncApp] = web.AppKey("slack_app", AsyncApp)
VERIFIER: web.AppKey[SignatureVerifier] = web.AppKey("slack_verifier", SignatureVerifier)
MAX_TIMESTAMP_DIGITS = 15  # far more than a fresh timestamp has; longer ones cannot be fresh


@dataclass
class DenialLog:
    """Refused Slack requests are audited, but a flood of forged ones must not fill the audit log
    or keep its lock from real decisions: at most `per_minute` rows a minute in this process; the
    refusals left out are counted into the next row written."""

    per_minute: int = 30
    clock: Callable[[], float] = time.monotonic
    _window: float = field(default=float("-inf"))
    _written: int = 0
    _left_out: int = 0

    def admit(self) -> int | None:
        """None: leave this refusal out. Else write it, with this many left out before it."""
        now = self.clock()
        if now - self._window >= 60:
            self._window, self._written = now, 0
        if self._written >= self.per_minute:
            self._left_out += 1
            return None
        self._written += 1
        left_out, self._left_out = self._left_out, 0
        return left_out


DENIALS: web.AppKey[DenialLog] = web.AppKey("slack_denials", DenialLog)


def build(
    settings: Settings,
    rt: Runtime,
    client: AsyncWebClient,
    metrics: Metrics | None = None,
    denials: DenialLog | None = None,
) -> AsyncApp:
    """The Bolt app with every listener registered; requests must be signed with the signing secret
    and come from the bot's own workspace."""
    app = AsyncApp(
        client=client,
        signing_secret=settings.slack_signing_secret or "",
        process_before_response=False,
        raise_error_for_unhandled_request=False,
    )
    app.use(_own_workspace_only(rt, denials or DenialLog(), AppIdentity(client=client)))
    directory = Directory(client=client)
    handlers.register(
        app,
        Services(
            rt=rt,
            reviewing=Reviewing(rt=rt, directory=directory, metrics=metrics),
            control=Control(rt=rt, directory=directory),
        ),
    )
    return app


@dataclass
class AppIdentity:
    """This app's id, from bots.info on the bot that auth.test named: looked up once, and again
    at most once a minute while Slack cannot answer (until then requests are not refused for it)."""

    client: AsyncWebClient
    retry_after: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _app_id: str | None = None
    _failed_at: float = field(default=float("-inf"))

    async def app_id(self, bot_id: str | None) -> str | None:
        if self._app_id is not None or bot_id is None:
            return self._app_id
        if self.clock() - self._failed_at < self.retry_after:
            return None
        try:
            response = await self.client.bots_info(bot=bot_id)
            app_id = response["bot"]["app_id"]
        except Exception as exc:  # any answer but the id (an error, a double without bots.info): check later
            self._failed_at = self.clock()
            log.warning("bots.info did not say this app's id (%s); api_app_id is not checked yet", exc)
            return None
        self._app_id = app_id if isinstance(app_id, str) and app_id else None
        return self._app_id


def _own_workspace_only(
    rt: Runtime, denials: DenialLog, identity: AppIdentity
) -> Callable[..., Awaitable[BoltResponse | None]]:
    """Refuse a request from another workspace than the bot's (auth.test's team_id), or for
    another app than this one (its api_app_id): one that installed the same app, signing secret
    and all, must not see or decide this one's drafts (reliability check AC-16)."""

    async def own_workspace_only(
        context: AsyncBoltContext, body: dict[str, Any], next: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        authorized = context.authorize_result
        ours = authorized.team_id if authorized else None
        if ours is not None and context.team_id != ours:
            why = f"request from workspace {context.team_id!r}, not the bot's {ours!r}"
            return await _refuse(rt, denials, f"slack-team:{context.team_id}", why)
        theirs = body.get("api_app_id") if isinstance(body, dict) else None
        if isinstance(theirs, str):
            app_id = await identity.app_id(authorized.bot_id if authorized else None)
            if app_id is not None and theirs != app_id:
                why = f"request for app {theirs[:40]!r}, not this app {app_id!r}"
                return await _refuse(rt, denials, f"slack-app:{theirs[:40]}", why)
        await next()
        return None

    return own_workspace_only


async def _refuse(rt: Runtime, denials: DenialLog, actor: str, why: str) -> BoltResponse:
    left_out = denials.admit()
    if left_out is not None:
        await asyncio.to_thread(_deny, rt, actor, why, left_out)
    return BoltResponse(status=401, body='{"error": "invalid request"}')


def _deny(rt: Runtime, actor: str, why: str, left_out: int) -> None:
    after: dict[str, object] = {"why": why}
    if left_out:
        after["refusals_not_logged_before"] = left_out
    with transaction(rt.engine, audited=True) as session:
        audit.append(
            session,
            at=rt.clock(),
            actor=actor,
            action="slack.auth_denied",
            subject="/slack/events",
            after=after,
            outcome="denied",
        )


class _FixedClock(Clock):
    """The verifier's clock, pinned to the instant the caller passes in."""

    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def check_signature(headers: Mapping[str, str], body: bytes, *, secret: str, now: float) -> str | None:
    """Why a request to /slack/events must be refused, or None when it is correctly signed and fresh."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    # slack_sdk's verifier raises instead of answering False on some malformed values: Unicode
    # digits (int() refuses some), numbers too large for float arithmetic, and non-ASCII
    # signatures (hmac.compare_digest refuses them). Slack sends ASCII, ten digits today.
    well_formed = (
        timestamp.isascii()
        and timestamp.isdigit()
        and len(timestamp) <= MAX_TIMESTAMP_DIGITS
        and signature.isascii()
        and signature != ""
    )
    if not well_formed:
        return "missing or malformed signature headers"
    # Before the verifier: it decodes the body itself and would raise on bytes that are not UTF-8.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    verifier = SignatureVerifier(secret, clock=_FixedClock(now))
    if not verifier.is_valid(body, timestamp, signature):
        return "bad signature or stale timestamp"
    return None


def _is_ssl_check(request: web.Request, raw: bytes) -> bool:
    """Slack's `ssl_check=1` probe, which Bolt answers before checking signatures (its SslCheck)."""
    if request.content_type != "application/x-www-form-urlencoded" or b"ssl_check=" not in raw:
        return False
    return urllib.parse.parse_qs(raw.decode("utf-8", "replace")).get("ssl_check") == ["1"]


async def slack_events(request: web.Request) -> web.Response:
    """Only correctly signed, fresh requests reach Bolt; refusals are audited (DenialLog)."""
    arrived.set(time.monotonic())  # ack_when_done's budget counts from here; each request sets it
    raw = await request.read()
    if _is_ssl_check(request, raw):
        return web.Response(status=200)  # Slack's probe of a command URL: acts on nothing
    verifier: SignatureVerifier = request.app[VERIFIER]
    why = check_signature(request.headers, raw, secret=verifier.signing_secret, now=verifier.clock.now())
    if why is not None:
        left_out = request.app[DENIALS].admit()
        if left_out is not None:
            await asyncio.to_thread(_deny, request.app[RUNTIME], f"remote:{request.remote}", why, left_out)
        return web.json_response({"error": "invalid request"}, status=401)
    app = request.app[SLACK_APP]
    bolt_response = await app.async_dispatch(await to_bolt_request(request))
    return await to_aiohttp_response(bolt_response)
