"""SlackDouble: the aiohttp app, its state, and how each Web API call is checked, recorded and answered."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from aiohttp import web

from tests.doubles.slack_api.calls import Call, Handler, _Answer, _error, _read_params
from tests.doubles.slack_api.faults import _Fault, _Faults
from tests.doubles.slack_api.methods import _WebApiMethods
from tests.doubles.slack_api.response_urls import _ResponseUrls
from tests.doubles.slack_api.workspace import (
    _SCOPE_NEEDED,
    BOT_USER_ID,
    DEFAULT_APP_TOKEN,
    DEFAULT_BOT_TOKEN,
    DEFAULT_SCOPES,
    JSON,
    _user_record,
)


class SlackDouble(_WebApiMethods, _ResponseUrls, _Faults):
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
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.bot_token = bot_token
        # Slack's clock, for message ts and the like: a test that moves the app's clock (hours
        # ahead, to when the digest is due) moves this one with it, or a history lookup "since
        # the job was queued" would find none of the messages Slack stamped in real time.
        self.wall = wall
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
            "bots.info": self._bots_info,
            "usergroups.users.list": self._usergroups_users_list,
            "conversations.open": self._conversations_open,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
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

    # -- configuration and inspection ----------------------------------------------------------

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

    def calls(self, method: str | None = None) -> list[Call]:
        return [c for c in self._calls if method is None or c.method == method]

    def message(self, channel: str, ts: str) -> JSON:
        return self.messages[(channel, ts)]

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
            wall=self.wall(),
        )
        self._calls.append(call)
        if self.latency:
            await asyncio.sleep(self.latency)
        handler = self._handlers.get(method)
        if handler is None:
            return self._answer(call, _Answer(_error("unknown_method", req_method=method)))
        fault = self._take_fault(method, params.get("channel"))
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
