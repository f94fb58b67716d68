"""A local aiohttp double of the Slack Web API that the real slack_sdk clients can talk to.

It rejects what Slack rejects (tokens, scopes, Block Kit limits, unknown messages), records every
call, scripts faults (429 + Retry-After, 5xx, slow answers), and serves response_url and upload URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from aiohttp import web

JSON: TypeAlias = dict[str, Any]

TEAM_ID = "T0001"
TEAM_DOMAIN = "acme"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0001"
APP_ID = "A0001"
DEFAULT_BOT_TOKEN = "xoxb-test"
DEFAULT_APP_TOKEN = "xapp-test"
# The minimal bot scopes from the reference (§7) plus files:write for files_upload_v2.
DEFAULT_SCOPES = (
    "chat:write",
    "commands",
    "users:read",
    "usergroups:read",
    "im:write",
    "files:write",
    "channels:history",
    "groups:history",
)

_SCOPE_NEEDED = {
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "users.info": "users:read",
    "usergroups.users.list": "usergroups:read",
    "conversations.open": "im:write",
    "conversations.history": "channels:history",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}
# Form-encoded callers (or hand-written requests) send these as JSON strings; Slack decodes them.
_JSON_PARAMS = ("blocks", "attachments", "view", "metadata", "files")
_USER_DEFAULTS: JSON = {
    "deleted": False,
    "is_admin": False,
    "is_owner": False,
    "is_primary_owner": False,
    "is_restricted": False,
    "is_ultra_restricted": False,
    "is_bot": False,
    "is_app_user": False,
    "tz": "UTC",
}
MAX_TEXT = 40_000


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
class _Fault:
    status: int | Literal["timeout"]
    remaining: int
    retry_after: int | None
    error: str
    delay: float


@dataclass
class _Answer:
    body: JSON
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


Handler: TypeAlias = Callable[[JSON], Awaitable[JSON | _Answer]]


def _error(code: str, **extra: Any) -> JSON:
    return {"ok": False, "error": code, **extra}


class SlackDouble:
    """The Web API double. ``async with SlackDouble() as slack:`` starts it on a free port.

    Point ``AsyncWebClient(token=..., base_url=slack.base_url)`` at it. State lives in plain
    attributes (``messages``, ``views``, ``home_views``, ``ephemerals``, ``files``, ``responses``,
    ``post_times``) so tests can assert on them directly.
    """

    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        channels: Iterable[str] | None = None,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        latency: float = 0.0,
        enforce_channel_rate: bool = False,
        socket_mode_url: str | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.users: dict[str, JSON] = {}
        self.usergroups: dict[str, list[str]] = {}
        self.channels: set[str] | None = None
        self.scopes: tuple[str, ...] = ()
        self.configure(users=users or {}, usergroups=usergroups or {}, channels=channels, scopes=scopes)
        self.latency = latency
        self.enforce_channel_rate = enforce_channel_rate
        # apps.connections.open answers with this; set it to a SocketModeDouble's ``url``.
        self.socket_mode_url = socket_mode_url
        self._runner: web.AppRunner | None = None
        self._port = 0
        # Kept across reset(): a ts must never repeat within a double's life.
        self._last_ts_us = 0
        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "views.open": self._views_open,
            "views.push": self._views_open,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "users.info": self._users_info,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.open": self._conversations_open,
            "conversations.history": self._conversations_history,
            "files.getUploadURLExternal": self._files_get_upload_url_external,
            "files.completeUploadExternal": self._files_complete_upload_external,
        }
        self.reset()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/{method}", self._serve_api)
        app.router.add_post("/actions/{tail:.*}", self._serve_response_url)
        app.router.add_post("/commands/{tail:.*}", self._serve_response_url)
        app.router.add_post("/upload/v1/{file_id}", self._serve_upload)
        app.router.add_get("/_double/calls", self._serve_calls)
        app.router.add_get("/_double/messages", self._serve_messages)
        app.router.add_get("/_double/responses", self._serve_responses)
        app.router.add_post("/_double/fail", self._serve_fail)
        app.router.add_post("/_double/reset", self._serve_reset)
        app.router.add_post("/_double/config", self._serve_config)
        # A short shutdown timeout: scripted "timeout" answers may still be sleeping at stop().
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/"

    @property
    def response_url_base(self) -> str:
        return f"{self.origin}/actions/"

    # -- configuration, faults, inspection ------------------------------------------------------

    def configure(
        self,
        *,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        channels: Iterable[str] | Literal["keep"] | None = "keep",
        scopes: Iterable[str] | None = None,
    ) -> None:
        """Replace the workspace directory; ``channels=None`` accepts any C/G/D id."""
        if users is not None:
            bot = {"name": "countersign", "real_name": "Countersign", "is_bot": True}
            self.users = {
                uid: _user_record(uid, profile) for uid, profile in {BOT_USER_ID: bot, **users}.items()
            }
        if usergroups is not None:
            self.usergroups = {sid: list(members) for sid, members in usergroups.items()}
        if channels != "keep":
            self.channels = None if channels is None else set(channels)
        if scopes is not None:
            self.scopes = tuple(scopes)

    def reset(self) -> None:
        """Forget calls, faults and everything posted; keep the workspace directory and tokens."""
        self._calls: list[Call] = []
        self._faults: dict[str, deque[_Fault]] = {}
        self.messages: dict[tuple[str, str], JSON] = {}
        self.ephemerals: list[JSON] = []
        self.views: dict[str, JSON] = {}
        self.home_views: dict[str, JSON] = {}
        self.files: dict[str, JSON] = {}
        self.uploads: dict[str, bytes] = {}
        self.responses: list[JSON] = []
        # Monotonic times of accepted chat.postMessage calls per channel, to check the 1/s/channel pace.
        self.post_times: dict[str, list[float]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._response_targets: dict[str, tuple[str, str]] = {}
        self._counter = 0

    def fail(
        self,
        method: str,
        *,
        status: int | Literal["timeout"] = 429,
        times: int = 1,
        retry_after: int | None = 1,
        error: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Script the next ``times`` calls of ``method`` (``"*"`` = any Web API method).

        ``method="response_url"`` scripts POSTs to the response_url sink instead (text bodies).

        ``status=429`` answers ``ratelimited`` with ``Retry-After`` (omitted when ``retry_after`` is
        None); other codes answer ``{"ok": false, "error": error}``, so ``status=200,
        error="channel_not_found"`` scripts a Slack-level error. ``status="timeout"`` performs the
        call normally (side effects happen) and holds the answer back for ``delay`` seconds, which
        is what a client that times out and retries must survive.
        """
        default_error = (
            "ratelimited" if status == 429 else "fatal_error" if status == 200 else "internal_error"
        )
        fault = _Fault(status, times, retry_after, error or default_error, delay)
        self._faults.setdefault(method, deque()).append(fault)

    def calls(self, method: str | None = None) -> list[Call]:
        return [c for c in self._calls if method is None or c.method == method]

    def message(self, channel: str, ts: str) -> JSON:
        return self.messages[(channel, ts)]

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

    # -- HTTP entry points ---------------------------------------------------------------------

    async def _serve_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params, token = await _read_params(request)
        call = Call(
            method=method,
            http_method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            params=params,
            monotonic=time.monotonic(),
            wall=time.time(),
        )
        self._calls.append(call)
        if self.latency:
            await asyncio.sleep(self.latency)
        handler = self._handlers.get(method)
        if handler is None:
            return self._answer(call, _Answer(_error("unknown_method", req_method=method)))
        fault = self._take_fault(method)
        if fault is not None and fault.status != "timeout":
            await asyncio.sleep(fault.delay)
            headers = {}
            if fault.status == 429 and fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            return self._answer(call, _Answer(_error(fault.error), fault.status, headers))
        denied = self._check_token(method, token)
        result = denied if denied is not None else await handler(params)
        response = self._answer(call, result if isinstance(result, _Answer) else _Answer(result))
        if fault is not None:
            await asyncio.sleep(fault.delay)
        return response

    def _answer(self, call: Call, answer: _Answer) -> web.Response:
        call.status, call.response = answer.status, answer.body
        headers = {"x-oauth-scopes": ",".join(self.scopes), **answer.headers}
        return web.json_response(answer.body, status=answer.status, headers=headers)

    def _take_fault(self, method: str) -> _Fault | None:
        # "*" covers Web API methods only; response_url posts are scripted by name.
        for key in (method, "*") if method != "response_url" else (method,):
            queue = self._faults.get(key)
            if queue:
                fault = queue[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.popleft()
                return fault
        return None

    def _check_token(self, method: str, token: str | None) -> JSON | None:
        if not token:
            return _error("not_authed")
        if token not in (self.bot_token, self.app_token):
            return _error("invalid_auth")
        # Slack refuses to mix the app-level token (Socket Mode) and the bot token.
        if (method == "apps.connections.open") != (token == self.app_token):
            return _error("not_allowed_token_type")
        needed = _SCOPE_NEEDED.get(method)
        if needed is not None and needed not in self.scopes:
            return _error("missing_scope", needed=needed, provided=",".join(self.scopes))
        return None

    async def _serve_response_url(self, request: web.Request) -> web.Response:
        raw = await request.read()
        entry: JSON = {
            "path": request.path,
            "json": None,
            "use": sum(1 for r in self.responses if r["path"] == request.path) + 1,
            "status": 200,
            "monotonic": time.monotonic(),
            "wall": time.time(),
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

    async def _serve_calls(self, request: web.Request) -> web.Response:
        method = request.query.get("method")
        return web.json_response([c.to_json() for c in self.calls(method)])

    async def _serve_messages(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.messages.values()))

    async def _serve_responses(self, request: web.Request) -> web.Response:
        return web.json_response(self.responses)

    async def _serve_fail(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.fail(spec.pop("method"), **spec)
        return web.json_response({"ok": True})

    async def _serve_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _serve_config(self, request: web.Request) -> web.Response:
        spec = await request.json()
        for attr in ("latency", "enforce_channel_rate", "socket_mode_url"):
            if attr in spec:
                setattr(self, attr, spec.pop(attr))
        self.configure(**spec)
        return web.json_response({"ok": True})

    # -- Web API methods -----------------------------------------------------------------------

    async def _auth_test(self, params: JSON) -> JSON:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "Acme",
            "user": "countersign",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    async def _apps_connections_open(self, params: JSON) -> JSON:
        if self.socket_mode_url is None:
            # A double-only error: the test forgot to point the double at a SocketModeDouble.
            return _error("socket_mode_url_not_set")
        return {"ok": True, "url": self.socket_mode_url}

    async def _chat_post_message(self, params: JSON) -> JSON | _Answer:
        channel = self._resolve_channel(params.get("channel"), allow_user=True)
        if channel is None:
            return _error("channel_not_found")
        problem = _message_problem(params)
        if problem is not None:
            return problem
        if self.enforce_channel_rate and not self._take_post_token(channel):
            return _Answer(_error("ratelimited"), 429, {"Retry-After": "1"})
        ts = self._next_ts()
        record: JSON = {"channel": channel, "ts": ts, "thread_ts": params.get("thread_ts"), "history": []}
        _apply_content(record, params, replacing=False)
        self.messages[(channel, ts)] = record
        self.post_times.setdefault(channel, []).append(time.monotonic())
        return {"ok": True, "channel": channel, "ts": ts, "message": _wire_message(record)}

    async def _conversations_history(self, params: JSON) -> JSON:
        """Newest first; metadata only with include_all_metadata, as Slack does."""
        channel = self._resolve_channel(params.get("channel"), allow_user=False)
        if channel is None:
            return _error("channel_not_found")
        oldest = float(params.get("oldest") or 0)
        limit = int(params.get("limit") or 100)
        with_metadata = str(params.get("include_all_metadata")).lower() in ("1", "true")
        found = []
        for (ch, ts), record in sorted(self.messages.items(), key=lambda item: item[0][1], reverse=True):
            if ch != channel or float(ts) < oldest or record.get("thread_ts") or record.get("deleted"):
                continue
            message = _wire_message(record)
            if not with_metadata:
                message.pop("metadata", None)
            found.append(message)
        return {"ok": True, "messages": found[:limit], "has_more": len(found) > limit}

    async def _chat_update(self, params: JSON) -> JSON:
        # chat.update needs the D… id for a DM; a U… id is not resolved here, unlike postMessage.
        channel = self._resolve_channel(params.get("channel"), allow_user=False)
        if channel is None:
            return _error("channel_not_found")
        record = self.messages.get((channel, str(params.get("ts", ""))))
        if record is None or record.get("deleted"):
            return _error("message_not_found")
        problem = _message_problem(params)
        if problem is not None:
            return problem
        self._store_version(record, params)
        return {
            "ok": True,
            "channel": channel,
            "ts": record["ts"],
            "text": record["text"],
            "message": _wire_message(record),
        }

    async def _chat_post_ephemeral(self, params: JSON) -> JSON:
        channel = self._resolve_channel(params.get("channel"), allow_user=False)
        if channel is None:
            return _error("channel_not_found")
        user = params.get("user")
        if user not in self.users:
            return _error("user_not_in_channel")
        problem = _message_problem(params)
        if problem is not None:
            return problem
        ts = self._next_ts()
        record: JSON = {"channel": channel, "user": user, "ts": ts, "thread_ts": params.get("thread_ts")}
        _apply_content(record, params, replacing=False)
        self.ephemerals.append(record)
        return {"ok": True, "message_ts": ts}

    async def _chat_get_permalink(self, params: JSON) -> JSON:
        channel = self._resolve_channel(params.get("channel"), allow_user=False)
        if channel is None:
            return _error("channel_not_found")
        ts = str(params.get("message_ts", ""))
        if (channel, ts) not in self.messages:
            return _error("message_not_found")
        permalink = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return {"ok": True, "channel": channel, "permalink": permalink}

    async def _views_open(self, params: JSON) -> JSON:
        # Serves views.push too: both need a trigger_id and a modal; the stack is not modelled.
        if not params.get("trigger_id"):
            return invalid_arguments([("missing required field: trigger_id", "/trigger_id")])
        problems = view_problems(params.get("view"), expected_type="modal")
        if problems:
            return invalid_arguments(problems)
        view = self._new_view(params["view"])
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    async def _views_update(self, params: JSON) -> JSON:
        view_id, external_id = params.get("view_id"), params.get("external_id")
        if not view_id and not external_id:
            return invalid_arguments([("must provide view_id or external_id", "/view_id")])
        current = self.views.get(str(view_id)) if view_id else None
        if current is None and external_id:
            current = next((v for v in self.views.values() if v.get("external_id") == external_id), None)
        if current is None:
            return _error("not_found")
        if params.get("hash") and params["hash"] != current["hash"]:
            return _error("hash_conflict")
        problems = view_problems(params.get("view"), expected_type=current["type"])
        if problems:
            return invalid_arguments(problems)
        view = self._new_view(params["view"], view_id=current["id"])
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    async def _views_publish(self, params: JSON) -> JSON:
        user_id = params.get("user_id")
        if not user_id:
            return invalid_arguments([("missing required field: user_id", "/user_id")])
        if user_id not in self.users:
            return _error("user_not_found")
        problems = view_problems(params.get("view"), expected_type="home")
        if problems:
            return invalid_arguments(problems)
        previous = self.home_views.get(str(user_id))
        if previous is not None and params.get("hash") and params["hash"] != previous["hash"]:
            return _error("hash_conflict")
        view = self._new_view(params["view"], view_id=previous["id"] if previous else None)
        self.home_views[str(user_id)] = view
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    async def _users_info(self, params: JSON) -> JSON:
        user = self.users.get(str(params.get("user", "")))
        return {"ok": True, "user": user} if user is not None else _error("user_not_found")

    async def _usergroups_users_list(self, params: JSON) -> JSON:
        members = self.usergroups.get(str(params.get("usergroup", "")))
        return {"ok": True, "users": list(members)} if members is not None else _error("no_such_subteam")

    async def _conversations_open(self, params: JSON) -> JSON:
        if params.get("channel"):
            channel = self._resolve_channel(params["channel"], allow_user=False)
            return {"ok": True, "channel": {"id": channel}} if channel else _error("channel_not_found")
        users = [u for u in str(params.get("users", "")).split(",") if u]
        if not users:
            return _error("users_list_not_supplied")
        if any(u not in self.users for u in users):
            return _error("user_not_found")
        if len(users) == 1:
            return {"ok": True, "channel": {"id": _dm_id(users[0])}}
        return {"ok": True, "channel": {"id": "G" + "".join(u[1:4] for u in users)}}

    async def _files_get_upload_url_external(self, params: JSON) -> JSON:
        filename, length = params.get("filename"), str(params.get("length", ""))
        if not filename or not length.isdigit():
            return _error("invalid_arguments")
        self._counter += 1
        file_id = f"F{self._counter:010d}"
        self.files[file_id] = {"id": file_id, "name": filename, "size": int(length), "completed": False}
        return {"ok": True, "upload_url": f"{self.origin}/upload/v1/{file_id}", "file_id": file_id}

    async def _files_complete_upload_external(self, params: JSON) -> JSON:
        entries = params.get("files")
        if not isinstance(entries, list) or not entries:
            return _error("invalid_arguments")
        channel_param = params.get("channel_id") or params.get("channels")
        channel = None
        if channel_param:
            channel = self._resolve_channel(str(channel_param).split(",")[0], allow_user=False)
            if channel is None:
                return _error("channel_not_found")
        completed = []
        for entry in entries:
            record = self.files.get(str(entry.get("id")))
            if record is None or record["id"] not in self.uploads:
                return _error("file_not_found")
            record.update(
                completed=True,
                title=entry.get("title") or record["name"],
                channel=channel,
                initial_comment=params.get("initial_comment"),
                thread_ts=params.get("thread_ts"),
            )
            completed.append({"id": record["id"], "title": record["title"], "name": record["name"]})
        return {"ok": True, "files": completed}

    # -- helpers -------------------------------------------------------------------------------

    def _resolve_channel(self, channel: Any, *, allow_user: bool) -> str | None:
        if not isinstance(channel, str) or not channel:
            return None
        if channel[0] in "UW":
            # chat.postMessage to a user id lands in the app's DM with that user.
            return _dm_id(channel) if allow_user and channel in self.users else None
        if channel[0] == "D" and any(_dm_id(u) == channel for u in self.users):
            return channel
        if self.channels is None:
            return channel if channel[0] in "CGD" else None
        return channel if channel in self.channels else None

    def _take_post_token(self, channel: str) -> bool:
        # Token bucket: a burst of 3, then one post per second per channel.
        now = time.monotonic()
        tokens, last = self._buckets.get(channel, (3.0, now))
        tokens = min(3.0, tokens + (now - last))
        if tokens < 1.0:
            self._buckets[channel] = (tokens, now)
            return False
        self._buckets[channel] = (tokens - 1.0, now)
        return True

    def _next_ts(self) -> str:
        # Slack ts: wall-clock seconds and a 6-digit fraction, unique and increasing.
        self._last_ts_us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
        return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    def _new_view(self, spec: JSON, *, view_id: str | None = None) -> JSON:
        self._counter += 1
        view_id = view_id or f"V{self._counter:010d}"
        return {
            "id": view_id,
            "team_id": TEAM_ID,
            "type": spec["type"],
            "blocks": spec.get("blocks", []),
            "private_metadata": spec.get("private_metadata", ""),
            "callback_id": spec.get("callback_id", ""),
            "external_id": spec.get("external_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{os.urandom(4).hex()}",
            "title": spec.get("title"),
            "submit": spec.get("submit"),
            "close": spec.get("close"),
            "clear_on_close": bool(spec.get("clear_on_close", False)),
            "notify_on_close": bool(spec.get("notify_on_close", False)),
            "root_view_id": view_id,
            "app_id": APP_ID,
            "bot_id": BOT_ID,
        }

    def _store_version(self, record: JSON, params: JSON) -> None:
        record["history"].append({k: record.get(k) for k in ("text", "blocks", "attachments", "metadata")})
        _apply_content(record, params, replacing=True)


def _user_record(user_id: str, profile: Mapping[str, Any]) -> JSON:
    name = profile.get("name", user_id.lower())
    real_name = profile.get("real_name", name)
    return {
        "id": user_id,
        "team_id": TEAM_ID,
        "name": name,
        "real_name": real_name,
        **_USER_DEFAULTS,
        **profile,
        "profile": {"real_name": real_name, "display_name": name, **profile.get("profile", {})},
    }


def _dm_id(user_id: str) -> str:
    return "D" + user_id[1:]


def _message_problem(params: JSON) -> JSON | None:
    blocks, text = params.get("blocks"), params.get("text")
    if not text and not blocks and not params.get("attachments"):
        return _error("no_text")
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return _error("msg_too_long")
    if blocks is not None:
        if not isinstance(blocks, list):
            return _error("invalid_blocks_format")
        problems = blocks_problems(blocks, pointer="/blocks", max_blocks=MAX_MESSAGE_BLOCKS)
        if problems:
            return invalid_blocks(problems)
    return None


def _apply_content(record: JSON, params: JSON, *, replacing: bool) -> None:
    if not replacing or "text" in params:
        record["text"] = params.get("text") or ""
    # Slack drops the old blocks when an update (or replace_original) sends text without blocks.
    record["blocks"] = params.get("blocks") or []
    record["attachments"] = params.get("attachments") or []
    if not replacing or "metadata" in params:
        record["metadata"] = params.get("metadata")


def _wire_message(record: JSON) -> JSON:
    message: JSON = {
        "type": "message",
        "subtype": "bot_message",
        "text": record["text"],
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "app_id": APP_ID,
        "team": TEAM_ID,
        "ts": record["ts"],
        "blocks": record["blocks"],
    }
    for key in ("thread_ts", "metadata"):
        if record.get(key):
            message[key] = record[key]
    if record["attachments"]:
        message["attachments"] = record["attachments"]
    if record["history"]:
        message["edited"] = {"user": BOT_USER_ID, "ts": f"{time.time():.6f}"}
    return message


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


# -- Block Kit validation, as Slack does it server-side ------------------------------------------
# slack_sdk's model classes check most limits client-side, but dict blocks go out unchecked and
# nothing checks the per-message block count, so the double is the last line (§5).

Problem: TypeAlias = tuple[str, str]  # (message, json-pointer)

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
_BUTTON_STYLES = ("primary", "danger")
_SELECTS = (
    "static_select",
    "external_select",
    "users_select",
    "conversations_select",
    "channels_select",
    "multi_static_select",
    "multi_external_select",
    "multi_users_select",
    "multi_conversations_select",
    "multi_channels_select",
)
_OTHER_ELEMENTS = (
    "datepicker",
    "timepicker",
    "datetimepicker",
    "email_text_input",
    "url_text_input",
    "number_input",
    "rich_text_input",
    "file_input",
    "workflow_button",
)
_LOOSE_BLOCKS = ("divider", "rich_text", "file", "video", "table", "context_actions")


def invalid_blocks(problems: list[Problem]) -> JSON:
    """chat.* answer for bad blocks: HTTP 200, ``errors`` plus ``response_metadata.messages``."""
    errors = [f"{message} [json-pointer:{pointer}]" for message, pointer in problems]
    return {
        "ok": False,
        "error": "invalid_blocks",
        "errors": errors,
        "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]},
    }


def invalid_arguments(problems: list[Problem]) -> JSON:
    """views.* answer for a bad view: ``invalid_arguments`` with ``response_metadata.messages``."""
    messages = [f"[ERROR] {message} [json-pointer:{pointer}]" for message, pointer in problems]
    return {"ok": False, "error": "invalid_arguments", "response_metadata": {"messages": messages}}


def blocks_problems(blocks: Any, *, pointer: str, max_blocks: int) -> list[Problem]:
    """Everything Slack would reject in a ``blocks`` array, with json-pointers into the request."""
    if not isinstance(blocks, list):
        return [("must be an array", pointer)]
    problems: list[Problem] = []
    if len(blocks) > max_blocks:
        problems.append((f"no more than {max_blocks} items allowed", pointer))
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        at = f"{pointer}/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(("must provide an object with a type", at))
            continue
        if "block_id" in block:
            block_id = block["block_id"]
            problems += _string_problems(block_id, f"{at}/block_id", 255)
            if isinstance(block_id, str) and block_id in seen_ids:
                problems.append((f"duplicate block_id: {block_id}", f"{at}/block_id"))
            seen_ids.add(str(block_id))
        checker = _BLOCK_CHECKS.get(block["type"])
        if checker is None and block["type"] not in _LOOSE_BLOCKS:
            problems.append(("failed to match all allowed schemas", at))
        elif checker is not None:
            problems += checker(block, at)
    return problems


def view_problems(view: Any, *, expected_type: str) -> list[Problem]:
    """What Slack would reject in a views.* ``view`` (pointers start at ``/view``)."""
    if not isinstance(view, dict):
        return [("must provide an object", "/view")]
    if view.get("type") != expected_type:
        return [(f"must be {expected_type}", "/view/type")]
    problems: list[Problem] = []
    if expected_type == "modal":
        if "title" not in view:
            problems.append(("missing required field: title", "/view"))
        for key in ("title", "submit", "close"):
            if key in view:
                problems += _text_problems(view[key], f"/view/{key}", 24, plain_only=True)
        blocks = view.get("blocks")
        has_input = isinstance(blocks, list) and any(
            isinstance(b, dict) and b.get("type") == "input" for b in blocks
        )
        if has_input and "submit" not in view:
            problems.append(("must provide submit when blocks contain an input", "/view/submit"))
    for key, limit in (("private_metadata", 3000), ("callback_id", 255), ("external_id", 255)):
        if key in view:
            problems += _string_problems(view[key], f"/view/{key}", limit, allow_empty=True)
    problems += blocks_problems(view.get("blocks"), pointer="/view/blocks", max_blocks=MAX_VIEW_BLOCKS)
    return problems


def _too_long(limit: int) -> str:
    return f"must be less than {limit + 1} characters"


def _string_problems(value: Any, at: str, limit: int, *, allow_empty: bool = False) -> list[Problem]:
    if not isinstance(value, str):
        return [("must be a string", at)]
    if not value and not allow_empty:
        return [("must be more than 0 characters", at)]
    return [(_too_long(limit), at)] if len(value) > limit else []


def _text_problems(obj: Any, at: str, limit: int, *, plain_only: bool = False) -> list[Problem]:
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if not isinstance(obj, dict) or obj.get("type") not in allowed:
        return [("failed to match all allowed schemas", at)]
    return _string_problems(obj.get("text"), f"{at}/text", limit)


def _array_problems(value: Any, at: str, *, most: int, least: int = 1) -> list[Problem]:
    if not isinstance(value, list):
        return [("must be an array", at)]
    if len(value) > most:
        return [(f"no more than {most} items allowed", at)]
    return [(f"must provide at least {least} items", at)] if len(value) < least else []


def _section(block: JSON, at: str) -> list[Problem]:
    problems: list[Problem] = []
    if "text" not in block and "fields" not in block:
        problems.append(("must provide either text or fields", at))
    if "text" in block:
        problems += _text_problems(block["text"], f"{at}/text", 3000)
    if "fields" in block:
        fields = block["fields"]
        problems += _array_problems(fields, f"{at}/fields", most=10)
        for i, item in enumerate(fields if isinstance(fields, list) else []):
            problems += _text_problems(item, f"{at}/fields/{i}", 2000)
    if "accessory" in block:
        problems += _element_problems(block["accessory"], f"{at}/accessory")
    return problems


def _header(block: JSON, at: str) -> list[Problem]:
    return _text_problems(block.get("text"), f"{at}/text", 150, plain_only=True)


def _context(block: JSON, at: str) -> list[Problem]:
    elements = block.get("elements")
    problems = _array_problems(elements, f"{at}/elements", most=10)
    for i, element in enumerate(elements if isinstance(elements, list) else []):
        if isinstance(element, dict) and element.get("type") == "image":
            problems += _string_problems(element.get("alt_text"), f"{at}/elements/{i}/alt_text", 2000)
        else:
            problems += _text_problems(element, f"{at}/elements/{i}", 3000)
    return problems


def _actions(block: JSON, at: str) -> list[Problem]:
    elements = block.get("elements")
    problems = _array_problems(elements, f"{at}/elements", most=25)
    action_ids: set[str] = set()
    for i, element in enumerate(elements if isinstance(elements, list) else []):
        problems += _element_problems(element, f"{at}/elements/{i}")
        action_id = element.get("action_id") if isinstance(element, dict) else None
        # Slack wants action_ids unique within their block; the block_id tells blocks apart.
        if isinstance(action_id, str) and action_id in action_ids:
            problems.append((f"duplicate action_id: {action_id}", f"{at}/elements/{i}/action_id"))
        if isinstance(action_id, str):
            action_ids.add(action_id)
    return problems


def _input(block: JSON, at: str) -> list[Problem]:
    problems = _text_problems(block.get("label"), f"{at}/label", 2000, plain_only=True)
    if "hint" in block:
        problems += _text_problems(block["hint"], f"{at}/hint", 2000, plain_only=True)
    if "element" not in block:
        return [*problems, ("missing required field: element", at)]
    return problems + _element_problems(block["element"], f"{at}/element")


def _image_block(block: JSON, at: str) -> list[Problem]:
    problems = _string_problems(block.get("alt_text"), f"{at}/alt_text", 2000)
    if "image_url" in block:
        problems += _string_problems(block["image_url"], f"{at}/image_url", 3000)
    if "title" in block:
        problems += _text_problems(block["title"], f"{at}/title", 2000, plain_only=True)
    return problems


def _markdown(block: JSON, at: str) -> list[Problem]:
    return _string_problems(block.get("text"), f"{at}/text", 12000)


_BLOCK_CHECKS: dict[str, Callable[[JSON, str], list[Problem]]] = {
    "section": _section,
    "header": _header,
    "context": _context,
    "actions": _actions,
    "input": _input,
    "image": _image_block,
    "markdown": _markdown,
}


def _element_problems(element: Any, at: str) -> list[Problem]:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return [("must provide an object with a type", at)]
    kind = element["type"]
    problems: list[Problem] = []
    if "action_id" in element:
        problems += _string_problems(element["action_id"], f"{at}/action_id", 255)
    if "placeholder" in element:
        problems += _text_problems(element["placeholder"], f"{at}/placeholder", 150, plain_only=True)
    if "confirm" in element:
        problems += _confirm_problems(element["confirm"], f"{at}/confirm")
    if kind == "button":
        problems += _text_problems(element.get("text"), f"{at}/text", 75, plain_only=True)
        if "value" in element:
            problems += _string_problems(element["value"], f"{at}/value", 2000)
        if "url" in element:
            problems += _string_problems(element["url"], f"{at}/url", 3000)
        if "style" in element and element["style"] not in _BUTTON_STYLES:
            problems.append(("must be one of primary, danger", f"{at}/style"))
    elif kind == "plain_text_input":
        for key, least in (("max_length", 1), ("min_length", 0)):
            value = element.get(key)
            if value is not None and (not isinstance(value, int) or not least <= value <= 3000):
                problems.append((f"must be between {least} and 3000", f"{at}/{key}"))
    elif kind in _SELECTS or kind in ("checkboxes", "radio_buttons", "overflow"):
        most = {"checkboxes": 10, "radio_buttons": 10, "overflow": 5}.get(kind, 100)
        least = 2 if kind == "overflow" else 1
        if "options" in element:
            options = element["options"]
            problems += _array_problems(options, f"{at}/options", most=most, least=least)
            for i, option in enumerate(options if isinstance(options, list) else []):
                problems += _option_problems(option, f"{at}/options/{i}")
    elif kind == "image":
        problems += _string_problems(element.get("alt_text"), f"{at}/alt_text", 2000)
    elif kind not in _OTHER_ELEMENTS:
        problems.append(("failed to match all allowed schemas", at))
    return problems


def _option_problems(option: Any, at: str) -> list[Problem]:
    if not isinstance(option, dict):
        return [("must provide an object", at)]
    problems = _text_problems(option.get("text"), f"{at}/text", 75)
    if "value" in option:
        problems += _string_problems(option["value"], f"{at}/value", 150)
    return problems


def _confirm_problems(confirm: Any, at: str) -> list[Problem]:
    if not isinstance(confirm, dict):
        return [("must provide an object", at)]
    problems: list[Problem] = []
    for key, limit, plain in (
        ("title", 100, True),
        ("text", 300, False),
        ("confirm", 30, True),
        ("deny", 30, True),
    ):
        if key in confirm:
            problems += _text_problems(confirm[key], f"{at}/{key}", limit, plain_only=plain)
    return problems


# -- running in another OS process -------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


def serve_forever(
    port: int,
    bot_token: str = DEFAULT_BOT_TOKEN,
    *,
    config: Mapping[str, Any] | None = None,
    exit_on_stdin_eof: bool = False,
) -> None:
    """Run a double until SIGTERM/SIGINT; prints ``READY <port>`` once it accepts connections.

    ``exit_on_stdin_eof`` also stops it when stdin closes, so a parent that dies without cleaning
    up (killed test run) does not leave a server holding its port.
    """
    asyncio.run(_serve(port, bot_token, dict(config or {}), exit_on_stdin_eof))


async def _serve(port: int, bot_token: str, config: JSON, exit_on_stdin_eof: bool) -> None:
    double = SlackDouble(bot_token=bot_token)
    for attr in ("latency", "enforce_channel_rate", "socket_mode_url", "app_token"):
        if attr in config:
            setattr(double, attr, config.pop(attr))
    double.configure(**config)
    await double.start(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if exit_on_stdin_eof:
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    print(f"READY {double.port}", flush=True)
    await stop.wait()
    await double.stop()


class SlackDoubleProcess:
    """A SlackDouble in a child process, driven over its ``/_double/*`` control endpoints.

    ``with SlackDoubleProcess(users=...) as slack:`` then hand ``slack.base_url`` to the product's
    subprocesses. Control calls are blocking (urllib); the server lives in another process, so
    calling them from an async test does not deadlock.
    """

    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        port: int = 0,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        usergroups: Mapping[str, Iterable[str]] | None = None,
        channels: Iterable[str] | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.bot_token = bot_token
        self._requested_port = port
        self._config: JSON = {
            "users": dict(users or {}),
            "usergroups": {k: list(v) for k, v in (usergroups or {}).items()},
            "channels": None if channels is None else sorted(channels),
        }
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "tests.doubles.slack_api",
            "--port",
            str(self._requested_port),
            "--bot-token",
            self.bot_token,
            "--config",
            json.dumps(self._config),
            "--exit-on-stdin-eof",
        ]
        self._proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.05)
            if ready:
                line = self._proc.stdout.readline()
                if line.startswith("READY "):
                    self.port = int(line.split()[1])
                    return
                if not line:
                    break
        self.stop()
        raise RuntimeError("Slack double subprocess did not report READY")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        self._proc = None

    def __enter__(self) -> SlackDoubleProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/"

    @property
    def response_url_base(self) -> str:
        return f"{self.origin}/actions/"

    def calls(self, method: str | None = None) -> list[Call]:
        query = "?" + urllib.parse.urlencode({"method": method}) if method else ""
        return [Call.from_json(c) for c in self._get(f"/_double/calls{query}")]

    def messages(self) -> list[JSON]:
        return list(self._get("/_double/messages"))

    def responses(self) -> list[JSON]:
        return list(self._get("/_double/responses"))

    def fail(
        self,
        method: str,
        *,
        status: int | Literal["timeout"] = 429,
        times: int = 1,
        retry_after: int | None = 1,
        error: str | None = None,
        delay: float = 0.0,
    ) -> None:
        spec = {
            "method": method,
            "status": status,
            "times": times,
            "retry_after": retry_after,
            "delay": delay,
        }
        self._post("/_double/fail", {**spec, "error": error})

    def reset(self) -> None:
        self._post("/_double/reset", {})

    def configure(self, **spec: Any) -> None:
        """``SlackDouble.configure`` keywords plus latency, enforce_channel_rate, socket_mode_url."""
        if "channels" in spec and spec["channels"] is not None:
            spec["channels"] = sorted(spec["channels"])
        self._post("/_double/config", spec)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.origin + path, timeout=10) as resp:
            return json.loads(resp.read())

    def _post(self, path: str, body: JSON) -> Any:
        req = urllib.request.Request(
            self.origin + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.doubles.slack_api", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed after READY)")
    parser.add_argument("--bot-token", default=DEFAULT_BOT_TOKEN)
    parser.add_argument(
        "--config", default="{}", help="JSON: users, usergroups, channels, scopes, latency, ..."
    )
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when the parent goes away")
    args = parser.parse_args(argv)
    serve_forever(
        args.port, args.bot_token, config=json.loads(args.config), exit_on_stdin_eof=args.exit_on_stdin_eof
    )


if __name__ == "__main__":
    main()
