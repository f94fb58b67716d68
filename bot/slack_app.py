"""The Bolt AsyncApp inside the server: HTTP mode at POST /slack/events, or Socket Mode."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
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
from handlers.context import Services
from storage.db import transaction

SLACK_APP: web.AppKey[AsyncApp] = web.AppKey("slack_app", AsyncApp)
VERIFIER: web.AppKey[SignatureVerifier] = web.AppKey("slack_verifier", SignatureVerifier)
MAX_TIMESTAMP_DIGITS = 15  # far more than a fresh timestamp has; longer ones cannot be fresh


def build(
    settings: Settings, rt: Runtime, client: AsyncWebClient, metrics: Metrics | None = None
) -> AsyncApp:
    """The Bolt app with every listener registered; requests must be signed with the signing secret."""
    app = AsyncApp(
        client=client,
        signing_secret=settings.slack_signing_secret or "",
        process_before_response=False,
        raise_error_for_unhandled_request=False,
    )
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


def _deny(rt: Runtime, request: web.Request, why: str) -> None:
    with transaction(rt.engine) as session:
        audit.append(
            session,
            at=rt.clock(),
            actor=f"remote:{request.remote}",
            action="slack.auth_denied",
            subject="/slack/events",
            after={"why": why},
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


async def slack_events(request: web.Request) -> web.Response:
    """Only correctly signed, fresh requests reach Bolt; every refusal is audited."""
    raw = await request.read()
    verifier: SignatureVerifier = request.app[VERIFIER]
    why = check_signature(request.headers, raw, secret=verifier.signing_secret, now=verifier.clock.now())
    if why is not None:
        await asyncio.to_thread(_deny, request.app[RUNTIME], request, why)
        return web.json_response({"error": "invalid request"}, status=401)
    app = request.app[SLACK_APP]
    bolt_response = await app.async_dispatch(await to_bolt_request(request))
    return await to_aiohttp_response(bolt_response)
