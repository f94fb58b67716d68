"""A local aiohttp double of the Anthropic Messages API for the real `anthropic` SDK to talk to.

It checks what the API checks (API key, anthropic-version header, required fields, the forced tool exists), records
every request, and answers from a script: a tool call, plain text, malformed tool input, an error
status such as 529 overloaded, or a sleep long enough to trip the client's timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiohttp import web

JSON: TypeAlias = dict[str, Any]

DEFAULT_API_KEY = "sk-ant-test-key"
TOOL_NAME = "report_findings"


@dataclass(frozen=True)
class ToolCall:
    """Answer with one tool_use block whose input is ``tool_input`` exactly as given."""

    tool_input: Any
    name: str = TOOL_NAME


@dataclass(frozen=True)
class Text:
    """Answer with text only, as a model that ignored the forced tool would."""

    text: str


@dataclass(frozen=True)
class Status:
    """Answer with an API error: 529 overloaded_error, 500 api_error, 401 authentication_error, ..."""

    status: int
    error_type: str = "api_error"
    message: str = "Something went wrong."


@dataclass(frozen=True)
class Sleep:
    """Hold the request this long before answering ``then``; long enough, the client times out."""

    seconds: float
    then: ToolCall | Text | Status | None = None


@dataclass(frozen=True)
class Garbage:
    """Answer 200 with a body that is not a Messages API response at all."""

    body: str = "<html>proxy error</html>"


Answer: TypeAlias = ToolCall | Text | Status | Sleep | Garbage


def findings(*items: tuple[str, str, str]) -> ToolCall:
    """A well-formed report_findings call: ``findings(("code", "high", "message"), ...)``."""
    return ToolCall({"findings": [{"code": c, "severity": s, "message": m} for c, s, m in items]})


@dataclass
class Request:
    """One request as the double saw it."""

    headers: dict[str, str]
    body: JSON
    status: int = 0

    @property
    def user_text(self) -> str:
        """All text the request sent as user content, joined."""
        parts: list[str] = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [b.get("text", "") for b in content if isinstance(b, dict)]
        return "\n".join(parts)

    @property
    def system_text(self) -> str:
        system = self.body.get("system", "")
        if isinstance(system, list):
            return "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
        return str(system)


def _error(status: int, error_type: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return web.json_response(body, status=status, headers={"request-id": "req_double"})


@dataclass
class AnthropicDouble:
    """``async with AnthropicDouble() as api:`` starts it on a free port; point the SDK at ``api.base_url``.

    Answers come from ``script(...)`` in order; once the script is empty every request gets
    ``default`` (a report with no findings).
    """

    api_key: str = DEFAULT_API_KEY
    default: Answer = field(default_factory=lambda: findings())
    requests: list[Request] = field(default_factory=list)
    _script: deque[Answer] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        # Scripted sleeps may still be pending at stop(); do not wait for them.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> AnthropicDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def script(self, *answers: Answer) -> None:
        self._script.extend(answers)

    async def _messages(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        recorded = Request(headers=dict(request.headers), body=body if isinstance(body, dict) else {})
        self.requests.append(recorded)
        response = await self._answer(request, body)
        recorded.status = response.status
        return response

    async def _answer(self, request: web.Request, body: Any) -> web.Response:
        if _api_key(request) != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        problem = _request_problem(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        answer = self._script.popleft() if self._script else self.default
        if isinstance(answer, Sleep):
            await asyncio.sleep(answer.seconds)
            answer = answer.then or self.default
        if isinstance(answer, Status):
            return _error(answer.status, answer.error_type, answer.message)
        if isinstance(answer, Garbage):
            return web.Response(text=answer.body, content_type="application/json")
        assert isinstance(answer, ToolCall | Text)
        return web.json_response(self._message(body["model"], answer), headers={"request-id": "req_double"})

    def _message(self, model: str, answer: ToolCall | Text) -> JSON:
        n = next(self._ids)
        if isinstance(answer, Text):
            content: list[JSON] = [{"type": "text", "text": answer.text}]
            stop_reason = "end_turn"
        else:
            content = [
                {"type": "tool_use", "id": f"toolu_{n:06d}", "name": answer.name, "input": answer.tool_input}
            ]
            stop_reason = "tool_use"
        return {
            "id": f"msg_{n:06d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 100, "output_tokens": 20},
        }


def _api_key(request: web.Request) -> str | None:
    """The key the client sent: the API takes ``x-api-key`` and, from SDK 2.x on, ``Authorization: Bearer``."""
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


def _request_problem(body: Any) -> str | None:
    """What the real API would reject with 400 invalid_request_error, or None."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: field required"
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return "messages: each message needs a role of user or assistant"
        if not message.get("content"):
            return "messages: content must not be empty"
    tools = body.get("tools", [])
    names = {t.get("name") for t in tools if isinstance(t, dict)}
    for tool in tools:
        schema = tool.get("input_schema") if isinstance(tool, dict) else None
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return "tools: input_schema must be a JSON schema of type object"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") not in names:
        return "tool_choice: tool not found in tools"
    return None
