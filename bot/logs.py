"""Structured JSON logs with a request id, and a filter that keeps secrets out of them."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import IO, Any

from aiohttp import web

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Agent tokens, Slack tokens, webhook secrets, API keys and Authorization values.
SECRET = re.compile(
    r"(cs_[A-Za-z0-9_-]{16,}|xox[abpsr]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|whsec_[A-Za-z0-9+/=]+"
    r"|sk-ant-[A-Za-z0-9_-]+|(?i:bearer)\s+\S+)"
)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def redact(text: str) -> str:
    return SECRET.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": request_id.get(),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to `stream` (stderr) as redacted JSON."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return handler


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag the request (and its log lines) with X-Request-Id, taken from the caller or made up."""
    given = request.headers.get("X-Request-Id", "")
    token = request_id.set(given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex)
    try:
        response = await handler(request)
        response.headers["X-Request-Id"] = request_id.get()
        return response
    finally:
        request_id.reset(token)
