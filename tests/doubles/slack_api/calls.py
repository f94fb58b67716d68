"""One Web API call as the double reads it (query, JSON or form body), records it and answers it."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

from aiohttp import web

from tests.doubles.slack_api.workspace import JSON

# Form-encoded callers (or hand-written requests) send these as JSON strings; Slack decodes them.
_JSON_PARAMS = ("blocks", "attachments", "view", "metadata", "files")


@dataclass
class Call:
    """One Web API call as the double saw it; ``status``/``response`` are filled in once answered."""

    method: str
    http_method: str
    headers: dict[str, str]
    params: JSON
    monotonic: float
    wall: float
    status: int = 0
    response: JSON | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response and self.response.get("ok"))

    def to_json(self) -> JSON:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Call:
        return cls(**data)


@dataclass
class _Answer:
    body: JSON
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Handler: TypeAlias = Callable[[JSON], Awaitable[JSON | _Answer]]


def _error(code: str, **extra: Any) -> JSON:
    return {"ok": False, "error": code, **extra}


async def _read_params(request: web.Request) -> tuple[JSON, str | None]:
    # slack_sdk puts some methods' params in the query string even on POST (auth.test,
    # conversations.open, files.*), others in a JSON or form body; Slack reads both.
    params: JSON = dict(request.query)
    raw = await request.read()
    if raw:
        if request.content_type == "application/json":
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if isinstance(body, dict):
                params.update(body)
        elif request.content_type == "application/x-www-form-urlencoded":
            params.update(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True))
    for key in _JSON_PARAMS:
        if isinstance(params.get(key), str):
            # A string that is not JSON stays a string; validation then rejects it as Slack would.
            with contextlib.suppress(ValueError):
                params[key] = json.loads(params[key])
    token = params.pop("token", None)
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        token = auth.removeprefix("Bearer ").strip()
    return params, token
