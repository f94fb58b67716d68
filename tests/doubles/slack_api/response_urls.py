"""The URLs Slack hands out besides the Web API: response_url (actions, commands) and file upload URLs."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from tests.doubles.slack_api.faults import _Fault
from tests.doubles.slack_api.messages import _message_problem
from tests.doubles.slack_api.workspace import JSON, TEAM_ID


class _ResponseUrls:
    """Part of SlackDouble: the response_url sink and the upload host, and what they change."""

    messages: dict[tuple[str, str], JSON]
    files: dict[str, JSON]
    uploads: dict[str, bytes]
    responses: list[JSON]
    _response_targets: dict[str, tuple[str, str]]
    _counter: int
    wall: Callable[[], float]

    # Provided by SlackDouble and its other parts; declared here for type checkers only.
    if TYPE_CHECKING:

        @property
        def origin(self) -> str: ...

        def _take_fault(self, method: str, channel: object = None) -> _Fault | None: ...

        def _store_version(self, record: JSON, params: JSON) -> None: ...

    def response_url(
        self, *, channel: str | None = None, ts: str | None = None, kind: str = "actions"
    ) -> str:
        """A fresh response_url served by this double.

        Pass the message's ``channel``/``ts`` and a POST with ``replace_original``/``delete_original``
        is applied to that message, as Slack does for a block_actions response_url.
        """
        self._counter += 1
        key = f"{self._counter}/{os.urandom(6).hex()}"
        if channel is not None and ts is not None:
            self._response_targets[key] = (channel, ts)
        return f"{self.origin}/{kind}/{TEAM_ID}/{key}"

    async def _serve_response_url(self, request: web.Request) -> web.Response:
        raw = await request.read()
        entry: JSON = {
            "path": request.path,
            "json": None,
            "use": sum(1 for r in self.responses if r["path"] == request.path) + 1,
            "status": 200,
            "monotonic": time.monotonic(),
            "wall": self.wall(),
        }
        self.responses.append(entry)
        reply = await self._respond_to_response_url(request.path, raw, entry)
        entry["status"] = reply.status
        return reply

    async def _respond_to_response_url(self, path: str, raw: bytes, entry: JSON) -> web.Response:
        fault = self._take_fault("response_url")
        if fault is not None:
            await asyncio.sleep(fault.delay)
            if fault.status != "timeout":
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                return web.Response(status=int(fault.status), text=fault.error, headers=headers)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        entry["json"] = body
        if not isinstance(body, dict):
            return web.Response(status=400, text="invalid_payload")
        # Like incoming webhooks, response_url errors are 400s with a bare text code.
        if not body.get("delete_original"):
            problem = _message_problem(body)
            if problem is not None:
                return web.Response(status=400, text=problem["error"])
        target = self._response_targets.get(path.split("/", 3)[-1])
        if target is not None and target in self.messages:
            if body.get("delete_original"):
                self.messages[target]["deleted"] = True
            elif body.get("replace_original"):
                self._store_version(self.messages[target], body)
        return web.Response(text="ok", content_type="text/plain")

    async def _serve_upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            return web.Response(status=404, text="not found", content_type="text/plain")
        data = await request.read()
        self.uploads[file_id] = data
        # Slack's upload host answers in plain text; slack_sdk only checks the 200.
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")
