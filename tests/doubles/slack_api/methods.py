"""The Web API methods the double answers: auth, apps, chat, conversations, views, users, files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.doubles.slack_api.block_kit import invalid_arguments, view_problems
from tests.doubles.slack_api.calls import _Answer, _error
from tests.doubles.slack_api.messages import _apply_content, _message_problem, _wire_message
from tests.doubles.slack_api.workspace import APP_ID, BOT_ID, BOT_USER_ID, JSON, TEAM_DOMAIN, TEAM_ID, _dm_id


class _WebApiMethods:
    """Part of SlackDouble: one handler per Web API method, and the state they share."""

    users: dict[str, JSON]
    usergroups: dict[str, list[str]]
    channels: set[str] | None
    enforce_channel_rate: bool
    socket_mode_url: str | None
    messages: dict[tuple[str, str], JSON]
    ephemerals: list[JSON]
    views: dict[str, JSON]
    home_views: dict[str, JSON]
    files: dict[str, JSON]
    uploads: dict[str, bytes]
    post_times: dict[str, list[float]]
    _buckets: dict[str, tuple[float, float]]
    _counter: int
    _last_ts_us: int
    wall: Callable[[], float]

    # Provided by SlackDouble and its other parts; declared here for type checkers only.
    if TYPE_CHECKING:

        @property
        def origin(self) -> str: ...

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
        """The channel's top-level messages, newest first."""
        channel = self._resolve_channel(params.get("channel"), allow_user=False)
        if channel is None:
            return _error("channel_not_found")
        records = [
            record
            for (ch, _), record in sorted(self.messages.items(), key=lambda item: item[0][1], reverse=True)
            if ch == channel and not record.get("thread_ts") and not record.get("deleted")
        ]
        return _page(records, params, default_limit=100)

    async def _conversations_replies(self, params: JSON) -> JSON:
        """The thread's parent then its replies, oldest first."""
        channel = self._resolve_channel(params.get("channel"), allow_user=False)
        if channel is None:
            return _error("channel_not_found")
        parent = self.messages.get((channel, str(params.get("ts", ""))))
        if parent is None or parent.get("deleted"):
            return _error("thread_not_found")
        replies = [
            record
            for (ch, _), record in sorted(self.messages.items(), key=lambda item: item[0][1])
            if ch == channel and record.get("thread_ts") == parent["ts"] and not record.get("deleted")
        ]
        return _page([parent, *replies], params, default_limit=1000)

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
        refused = _view_refusal(params.get("view"), expected_type="modal")
        if refused:
            return refused
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
        refused = _view_refusal(params.get("view"), expected_type=current["type"])
        if refused:
            return refused
        view = self._new_view(params["view"], view_id=current["id"])
        self.views[view["id"]] = view
        return {"ok": True, "view": view}

    async def _views_publish(self, params: JSON) -> JSON:
        user_id = params.get("user_id")
        if not user_id:
            return invalid_arguments([("missing required field: user_id", "/user_id")])
        if user_id not in self.users:
            return _error("user_not_found")
        refused = _view_refusal(params.get("view"), expected_type="home")
        if refused:
            return refused
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

    async def _bots_info(self, params: JSON) -> JSON:
        if params.get("bot") != BOT_ID:
            return _error("bot_not_found")
        bot = {
            "id": BOT_ID,
            "deleted": False,
            "name": "countersign",
            "app_id": APP_ID,
            "user_id": BOT_USER_ID,
        }
        return {"ok": True, "bot": bot}

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
        if channel is not None:
            # Sharing into a channel posts a message that carries the files (in its thread when
            # thread_ts is given), so conversations.history shows the upload as Slack's does.
            ts = self._next_ts()
            record = {"channel": channel, "ts": ts, "thread_ts": params.get("thread_ts"), "history": []}
            _apply_content(record, {"text": params.get("initial_comment") or ""}, replacing=False)
            record["files"] = completed
            self.messages[(channel, ts)] = record
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
        self._last_ts_us = max(int(self.wall() * 1_000_000), self._last_ts_us + 1)
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
            "hash": f"{int(self.wall())}.{os.urandom(4).hex()}",
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
        record["edited_ts"] = f"{self.wall():.6f}"
        _apply_content(record, params, replacing=True)


def _page(records: list[JSON], params: JSON, *, default_limit: int) -> JSON:
    """A conversations.* answer: messages from `oldest` on, a page of `limit` at a time (`cursor`
    from response_metadata.next_cursor), metadata only with include_all_metadata, as Slack does."""
    oldest = float(params.get("oldest") or 0)
    with_metadata = str(params.get("include_all_metadata")).lower() in ("1", "true")
    found = []
    for record in records:
        if float(record["ts"]) < oldest:
            continue
        message = _wire_message(record)
        if not with_metadata:
            message.pop("metadata", None)
        found.append(message)
    start, limit = int(params.get("cursor") or 0), int(params.get("limit") or default_limit)
    page: JSON = {
        "ok": True,
        "messages": found[start : start + limit],
        "has_more": len(found) > start + limit,
    }
    if page["has_more"]:
        page["response_metadata"] = {"next_cursor": str(start + limit)}
    return page


MAX_VIEW_BYTES = 250_000  # a view's JSON; past it views.* answer view_too_large


def _view_refusal(view: Any, *, expected_type: str) -> JSON | None:
    """Slack's answer to a views.* call whose view it refuses, or None."""
    problems = view_problems(view, expected_type=expected_type)
    if problems:
        return invalid_arguments(problems)
    if len(json.dumps(view, ensure_ascii=False).encode()) > MAX_VIEW_BYTES:
        return _error("view_too_large")
    return None
