"""The Bolt AsyncApp inside the server: HTTP mode at POST /slack/events, or Socket Mode."""

from __future__ import annotations

import asyncio

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_sdk.signature import SignatureVerifier
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


async def slack_events(request: web.Request) -> web.Response:
    """Only correctly signed, fresh requests reach Bolt; every refusal is audited."""
    raw = await request.read()
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    verifier: SignatureVerifier = request.app[VERIFIER]
    why = None
    if not timestamp.isdigit() or not signature:
        why = "missing or malformed signature headers"
    elif not verifier.is_valid(raw, timestamp, signature):
        why = "bad signature or stale timestamp"
    else:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            why = "body is not UTF-8"
    if why is not None:
        await asyncio.to_thread(_deny, request.app[RUNTIME], request, why)
        return web.json_response({"error": "invalid request"}, status=401)
    app = request.app[SLACK_APP]
    bolt_response = await app.async_dispatch(await to_bolt_request(request))
    return await to_aiohttp_response(bolt_response)
