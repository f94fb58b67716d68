"""aiohttp routes of the agent API (/v1): parse, authenticate, call one use-case, answer JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

from bot import agents, drafts, intake, threads
from bot.errors import (
    BadRequest,
    CountersignError,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    Unavailable,
    error_body,
)
from bot.ratelimit import RateLimiter
from bot.risk.workers import RuleWorkers
from bot.runtime import Runtime
from bot.schemas import IDEMPOTENCY_KEY_RE, DoneIn, DraftIn
from handlers.openapi import spec
from storage.tables import Agent

log = logging.getLogger(__name__)

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter", RateLimiter)
TOKENS: web.AppKey[agents.TokenCache] = web.AppKey("tokens", agents.TokenCache)
INTAKE: web.AppKey[intake.IntakeWriter] = web.AppKey("intake", intake.IntakeWriter)
RULES: web.AppKey[RuleWorkers] = web.AppKey("rules", RuleWorkers)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: CountersignError) -> web.Response:
    headers = None
    if isinstance(error, RateLimited):
        headers = {"Retry-After": str(error.retry_after)}
    elif isinstance(error, Unavailable):
        headers = {"Retry-After": "1"}  # a database blip: clients come back soon rather than hammer
    return web.json_response(error.to_body(), status=error.status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure of the agent API leaves as the documented JSON error, never a stack trace."""
    try:
        return await handler(request)
    except CountersignError as exc:
        return error_response(exc)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        return web.json_response(error_body("invalid", message, field), status=422)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("request body is too large"))
    except web.HTTPException as exc:
        if not request.path.startswith("/v1/") or exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response(error_body(code, exc.reason), status=exc.status, headers=headers)
    except (OperationalError, ProgrammingError, InterfaceError):
        # Fail closed: without the control state (pause, modes, caps) nothing is accepted or decided.
        log.exception("database unavailable")
        return error_response(
            Unavailable(
                "the control state cannot be read; the request most likely did not take effect:"
                " retry it with the same Idempotency-Key"
            )
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        if not request.path.startswith("/v1/"):
            raise
        # A bug or a state nobody planned for (e.g. a control value that does not parse): still the
        # documented error shape, with the request id to find the logged traceback by.
        log.exception("unexpected error")
        body = error_body("internal", "unexpected error; the server log has the details")
        return web.json_response(body, status=500)


async def _agent(request: web.Request) -> Agent:
    """The agent behind the bearer token, read from the database, within its request rate."""
    agent, _ = await _authenticated(request, cached=False)
    return agent


async def _authenticated(request: web.Request, *, cached: bool) -> tuple[Agent, str]:
    """The agent behind the bearer token and the token's hash, within the agent's request rate.
    Only intake takes a `cached` answer: it checks the hash again in the transaction that stores
    the draft."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the agent token as 'Authorization: Bearer <token>'")
    rt, cache = request.app[RUNTIME], request.app[TOKENS]
    token = token.strip()
    token_hash = agents.hash_token(token)
    agent = cache.get(token_hash) if cached else None
    if agent is None:
        agent = await threads.read(agents.authenticate, rt, token)
        cache.put(token_hash, agent)
    wait = request.app[LIMITER].take(agent.id)  # type: ignore[arg-type]
    if wait:
        raise RateLimited(
            "too many requests for this agent", retry_after=RateLimiter.retry_after_header(wait)
        )
    return agent, token_hash


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


async def _json_body(request: web.Request) -> Any:
    limit = request.app[RUNTIME].config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    # Read to the end: one read() returns what has arrived so far, which for a body sent in
    # several TCP segments (or chunks) is only its start.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_json_constant, parse_float=_json_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


def _idempotency_key(request: web.Request, draft: DraftIn) -> str | None:
    header = request.headers.get("Idempotency-Key")
    if header is not None:
        if len(header) > 2 and header[0] == header[-1] == '"':
            header = header[1:-1]  # the IETF draft sends it as a structured-field string
        if not IDEMPOTENCY_KEY_RE.fullmatch(header):
            raise BadRequest("Idempotency-Key must be 1-255 printable ASCII characters")
        if draft.idempotency_key is not None and draft.idempotency_key != header:
            raise BadRequest("Idempotency-Key header and idempotency_key field differ")
    return header or draft.idempotency_key


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def post_draft(request: web.Request) -> web.Response:
    agent, token_hash = await _authenticated(request, cached=True)
    data = await _json_body(request)
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    draft = DraftIn.model_validate(data)
    key = _idempotency_key(request, draft)
    checked = intake.check(request.app[RUNTIME], agent=agent, draft=draft)
    writer = request.app[INTAKE]
    with writer.in_flight(agent.id, key):  # type: ignore[arg-type]
        findings = await request.app[RULES].check(checked.rule_job())
        prepared = checked.prepared(findings, key=key, base_url=_base_url(request), token_hash=token_hash)
        status, body = await writer.submit(prepared)
    return web.json_response(body, status=status)


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise BadRequest("wait must be a number of seconds") from None
    if not 0 <= wait <= drafts.MAX_WAIT_SECONDS:
        raise BadRequest(f"wait must be between 0 and {drafts.MAX_WAIT_SECONDS} seconds")
    return wait


async def get_draft(request: web.Request) -> web.Response:
    agent = await _agent(request)
    rt = request.app[RUNTIME]
    draft_id = request.match_info["draft_id"]
    wait = _wait_seconds(request)
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline:
        status = await threads.read(drafts.status_of, rt, agent=agent, draft_id=draft_id)
        if status != "pending":
            break
        await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    view = await threads.read(drafts.get, rt, agent=agent, draft_id=draft_id)
    return web.json_response(view)


async def delete_draft(request: web.Request) -> web.Response:
    agent = await _agent(request)
    rt = request.app[RUNTIME]
    view = await asyncio.to_thread(drafts.cancel, rt, agent=agent, draft_id=request.match_info["draft_id"])
    return web.json_response(view)


async def post_done(request: web.Request) -> web.Response:
    agent = await _agent(request)
    data = await _json_body(request)
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    done = DoneIn.model_validate(data)
    rt = request.app[RUNTIME]
    view = await asyncio.to_thread(
        drafts.report_done, rt, agent=agent, draft_id=request.match_info["draft_id"], done=done
    )
    return web.json_response(view)


async def get_me(request: web.Request) -> web.Response:
    agent = await _agent(request)
    return web.json_response(await threads.read(agents.me, request.app[RUNTIME], agent=agent))


async def post_heartbeat(request: web.Request) -> web.Response:
    agent = await _agent(request)
    return web.json_response(await asyncio.to_thread(agents.heartbeat, request.app[RUNTIME], agent=agent))


async def get_openapi(request: web.Request) -> web.Response:
    """Public; with a valid agent token it also narrows callback_url to that agent's prefixes.

    Any other Authorization header gets the generic document: a public document never 401s.
    """
    config = request.app[RUNTIME].config
    currencies = tuple(sorted({category.currency for category in config.categories.values()}))
    prefixes = None
    if request.headers.get("Authorization"):
        try:
            agent = await _agent(request)
        except Unauthorized:
            pass
        else:
            prefixes = tuple(json.loads(agent.callback_prefixes))
    return web.json_response(spec(tuple(sorted(config.categories)), currencies, prefixes))


def register(app: web.Application) -> None:
    """Add the /v1 routes to the aiohttp application."""
    app.router.add_post("/v1/drafts", post_draft)
    app.router.add_get("/v1/drafts/{draft_id}", get_draft)
    app.router.add_delete("/v1/drafts/{draft_id}", delete_draft)
    app.router.add_post("/v1/drafts/{draft_id}/done", post_done)
    app.router.add_get("/v1/agents/me", get_me)
    app.router.add_post("/v1/heartbeat", post_heartbeat)
    app.router.add_get("/v1/openapi.json", get_openapi)
