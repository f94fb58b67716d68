"""Outbound Slack: the Web API client, reviewer lookups, and the outbox jobs that post messages.

A draft is posted by exactly one job (the one enqueued at submission); every later job only
updates the stored (channel, ts), so a retried or duplicated job never posts a second message.
Every post carries message metadata saying what it is (the draft, the digest's day, the job), so
a job run again after Slack took its post (the answer was lost, or the process died before the
job was marked done) finds that post in the channel instead of posting a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.models.blocks import MarkdownTextObject, SectionBlock
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.exc import IntegrityError

from bot import cards, digest, policy
from bot.mrkdwn import escape_cut
from bot.outbox import NotAttempted, Permanent, RetryLater
from bot.runtime import Runtime
from bot.settings import Category, Settings
from handlers import blocks
from storage import queries
from storage.db import transaction
from storage.tables import OutboxJob, ScheduleClaim

log = logging.getLogger(__name__)

# Errors no retry can fix: a bad channel, a revoked token, a message Slack refuses.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "invalid_blocks",
        "msg_too_long",
        "msg_blocks_too_long",
        "no_text",
        "missing_scope",
        "message_not_found",
        "cant_update_message",
    }
)


DIGEST_EVENT = "countersign_digest"


def chart_filename(day: date) -> str:
    return f"countersign-trend-{day.isoformat()}.png"


def whole_text_filename(day: date) -> str:
    return f"countersign-digest-{day.isoformat()}.txt"


async def post_digest(
    client: AsyncWebClient,
    channel: str,
    built: digest.Digest,
    *,
    text: bool = True,
    chart: bool = True,
    whole: bool = True,
) -> None:
    """The digest as text sections (within Block Kit limits), then the chart as a PNG file, and
    the whole text as a file when the message could not hold all of it.

    The text's message metadata and the files' names carry the day, so a retried job can see
    which of them an earlier attempt already posted (``SlackJobs.digest``).
    """
    sections, left_out = built.slack_sections(blocks.MESSAGE_TEXT_BUDGET)
    if text:
        await client.chat_postMessage(
            channel=channel,
            text=sections[0],
            blocks=[SectionBlock(text=MarkdownTextObject(text=section)) for section in sections],
            metadata={"event_type": DIGEST_EVENT, "event_payload": {"day": built.day.isoformat()}},
            unfurl_links=False,
        )
    if whole and left_out:
        await client.files_upload_v2(
            channel=channel,
            content=built.text(),
            filename=whole_text_filename(built.day),
            title=f"Countersign daily digest — {built.day.isoformat()}, in full",
        )
    if chart:
        await client.files_upload_v2(
            channel=channel,
            content=digest.png(built),
            filename=chart_filename(built.day),
            title="Approved / edited / rejected, last 7 days",
        )


METADATA_EVENT = "countersign_draft"
# Thread replies and alerts carry the outbox job that posted them.
JOB_EVENT = "countersign_job"
# How far back a retried post looks for its earlier attempt: 5 pages of 200 messages.
HISTORY_PAGES = 5
# Answers to a history lookup that no retry changes: the bot is no member, or lacks the scope.
HISTORY_UNREADABLE = frozenset({"not_in_channel", "missing_scope"})


def _event_payload(message: dict[str, Any], event_type: str) -> dict[str, Any]:
    """The message's metadata payload if it carries ``event_type``, else empty."""
    metadata = message.get("metadata") or {}
    return (metadata.get("event_payload") or {}) if metadata.get("event_type") == event_type else {}


def make_client(settings: Settings, *, timeout: int = 10) -> AsyncWebClient:
    """The Web API client: base URL from the environment, retries for 429, 5xx and dropped connections."""
    return AsyncWebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url,
        timeout=timeout,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=1),
            AsyncServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def classify(error: SlackApiError) -> Exception:
    """Turn a Slack failure into the outbox's retry decision."""
    response = error.response
    status = getattr(response, "status_code", 0)
    if status == 429:
        retry_after = response.headers.get("Retry-After") or response.headers.get("retry-after")
        return RetryLater("slack ratelimited", retry_after=float(retry_after) if retry_after else None)
    code = response.get("error") if hasattr(response, "get") else None
    if code in PERMANENT_ERRORS:
        return Permanent(f"slack error {code}")
    return RetryLater(f"slack error {code or status}")


@dataclass
class ChannelPacer:
    """Slack allows about one message per second per channel, after a short burst: a token bucket
    of `burst` posts refilled at `per_second`, as Slack describes its limit (and as the test
    double enforces it), with `margin` seconds more per wait for the two clocks to disagree."""

    burst: int = 3
    per_second: float = 1.0
    margin: float = 0.05
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # channel: (tokens, at)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """The process is stopping: a message that would wait for its turn, now or later, is
        given back to the queue instead (NotAttempted), so that shutdown does not wait on the
        pace and another replica can post it at once."""
        self._stopping.set()

    async def wait(self, channel: str) -> None:
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            now = self.clock()
            tokens, since = self._buckets.get(channel, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - since) * self.per_second)
            if tokens < 1.0:
                turn = (1.0 - tokens) / self.per_second + self.margin
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), turn)
                if self._stopping.is_set():
                    raise NotAttempted(f"stopping before this message's turn in {channel}")
                later = self.clock()
                tokens, now = min(float(self.burst), tokens + (later - now) * self.per_second), later
            self._buckets[channel] = (tokens - 1.0, now)


@dataclass
class Directory:
    """Who may review: users.info and usergroups.users.list, cached (usergroups are Tier 2)."""

    client: AsyncWebClient
    ttl: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _users: dict[str, tuple[float, policy.Reviewer]] = field(default_factory=dict)
    _names: dict[str, str] = field(default_factory=dict)  # user id: the name Slack shows
    _groups: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)

    async def reviewer(self, user_id: str) -> policy.Reviewer:
        """What Slack says about a user; raises SlackApiError when it cannot tell (fail closed)."""
        cached = self._users.get(user_id)
        if cached and self.clock() - cached[0] < self.ttl:
            return cached[1]
        response = await self.client.users_info(user=user_id)
        user: dict[str, Any] = response["user"]
        reviewer = policy.Reviewer(
            user_id=user_id,
            deleted=bool(user.get("deleted")),
            is_bot=bool(user.get("is_bot")) or bool(user.get("is_app_user")),
            is_guest=bool(user.get("is_restricted")) or bool(user.get("is_ultra_restricted")),
        )
        self._users[user_id] = (self.clock(), reviewer)
        profile = user.get("profile") or {}
        shown = (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
        )
        if shown:
            self._names[user_id] = str(shown)
        return reviewer

    async def names(self, user_ids: list[str]) -> dict[str, str]:
        """The names Slack shows for these users; one it cannot tell now is left out."""
        for user_id in user_ids:
            with contextlib.suppress(SlackApiError):
                await self.reviewer(user_id)
        return {u: self._names[u] for u in user_ids if u in self._names}

    async def reviewers(self, category: Category) -> frozenset[str]:
        """The category's reviewers: listed ids plus the members of its user group."""
        if category.reviewer_group is None:
            return category.reviewers
        cached = self._groups.get(category.reviewer_group)
        if cached and self.clock() - cached[0] < self.ttl:
            return category.reviewers | cached[1]
        response = await self.client.usergroups_users_list(usergroup=category.reviewer_group)
        members = frozenset(response.get("users") or [])
        self._groups[category.reviewer_group] = (self.clock(), members)
        return category.reviewers | members


@dataclass
class SlackJobs:
    """The outbox handlers that talk to Slack."""

    rt: Runtime
    client: AsyncWebClient
    pacer: ChannelPacer = field(default_factory=ChannelPacer)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def handlers(self) -> dict[str, Any]:
        return {
            "slack.render": self.render,
            "slack.thread": self.thread,
            "slack.alert": self.alert,
            "slack.digest": self.digest,
        }

    async def digest(self, job: OutboxJob) -> None:
        """Post a day's digest and its 7-day trend chart to the digest channel."""
        payload = json.loads(job.payload)
        day, channel = date.fromisoformat(payload["day"]), self.rt.config.digest_channel or ""
        # Named, not @-mentioned: a mention would notify everyone named, every morning.
        people = await Directory(client=self.client).names(
            await asyncio.to_thread(digest.people_of, self.rt, day)
        )
        built = await asyncio.to_thread(digest.build, self.rt, day, people=people)
        built.late = bool(payload.get("late"))
        try:
            text = chart = whole = True
            if job.attempts > 1:
                # An earlier attempt may have posted the text, or more, and then died or lost
                # Slack's answer: post only what the channel does not show yet.
                earlier = await self._recent_messages(job, channel)
                text = not any(_event_payload(m, DIGEST_EVENT).get("day") == day.isoformat() for m in earlier)
                files = {f.get("name") for m in earlier for f in m.get("files") or []}
                chart, whole = chart_filename(day) not in files, whole_text_filename(day) not in files
            await post_digest(self.client, channel, built, text=text, chart=chart, whole=whole)
        except SlackApiError as exc:
            raise classify(exc) from None

    async def render(self, job: OutboxJob) -> None:
        """Post the draft's message the first time, update it every time after."""
        draft_id = json.loads(job.payload)["draft_id"]
        # One render per draft at a time in this process, reading the state inside the lock, so
        # an older state never overwrites a newer one.
        lock = self._locks.setdefault(draft_id, asyncio.Lock())
        async with lock:
            loaded = await asyncio.to_thread(cards.load_card, self.rt, draft_id)
            if loaded is None:
                return
            card, place = loaded
            text, content = blocks.fallback_text(card), blocks.draft_blocks(card)
            try:
                if place.ts is None:
                    if not json.loads(job.payload).get("post"):
                        raise RetryLater("draft message not posted yet", retry_after=2)
                    # An earlier attempt may have posted and then lost the answer (a timeout):
                    # find that message by its metadata instead of posting a second one.
                    ts = (
                        await self._already_posted(job, place.channel, draft_id) if job.attempts > 1 else None
                    )
                    if ts is None:
                        await self.pacer.wait(place.channel)
                        response = await self.client.chat_postMessage(
                            channel=place.channel,
                            text=text,
                            blocks=content,
                            metadata={"event_type": METADATA_EVENT, "event_payload": {"draft_id": draft_id}},
                            unfurl_links=False,
                            unfurl_media=False,
                        )
                        ts = response["ts"]
                    await asyncio.to_thread(self._store_ts, card, place.channel, ts)
                    if job.attempts > 1:
                        await asyncio.to_thread(self._recovered, job)
                else:
                    await self.client.chat_update(
                        channel=place.channel, ts=place.ts, text=text, blocks=content
                    )
            except SlackApiError as exc:
                raise classify(exc) from None
        if len(self._locks) > 10_000:
            self._locks.clear()

    async def _already_posted(self, job: OutboxJob, channel: str, draft_id: str) -> str | None:
        """The ts of this draft's message if a previous attempt posted it (message metadata)."""
        for message in await self._recent_messages(job, channel):
            if _event_payload(message, METADATA_EVENT).get("draft_id") == draft_id:
                return str(message["ts"])
        return None

    async def _recent_messages(
        self, job: OutboxJob, channel: str, thread_ts: str | None = None
    ) -> list[dict[str, Any]]:
        """The messages since shortly before the job was enqueued, with their metadata: the
        channel's (up to HISTORY_PAGES pages of 200: a busy channel can have more than one page
        since), or the thread's. When Slack will not show them (chat:write.public lets the bot post
        where it is no member, and history needs membership), none: the post goes out anyway,
        since a second copy is better than a lost one."""
        try:
            if thread_ts is not None:
                response = await self.client.conversations_replies(
                    channel=channel, ts=thread_ts, include_all_metadata=True, limit=1000
                )
                return list(response.get("messages") or [])
            return await self._history(job, channel)
        except SlackApiError as exc:
            code = exc.response.get("error") if hasattr(exc.response, "get") else None
            if code not in HISTORY_UNREADABLE:
                raise
            log.warning("cannot read %s (%s): posting without looking for an earlier attempt", channel, code)
            return []

    async def _history(self, job: OutboxJob, channel: str) -> list[dict[str, Any]]:
        oldest, cursor = job.created_at.timestamp() - 60, None
        messages: list[dict[str, Any]] = []
        for _ in range(HISTORY_PAGES):
            response = await self.client.conversations_history(
                channel=channel, oldest=str(oldest), include_all_metadata=True, limit=200, cursor=cursor
            )
            messages += response.get("messages") or []
            cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not response.get("has_more") or not cursor:
                break
        return messages

    def _recovered(self, job: OutboxJob) -> None:
        """Slack is back after failures: say so in the alerts channel, at most once an hour."""
        now = self.rt.clock()
        lag = int((now - job.created_at).total_seconds())
        try:
            with transaction(self.rt.engine) as session:
                session.add(
                    ScheduleClaim(
                        name=f"slack-recovered:{now:%Y-%m-%dT%H}", claimed_by="outbox", claimed_at=now
                    )
                )
                session.flush()
                text = (
                    f":satellite_antenna: Slack deliveries recovered: a draft was posted after {job.attempts}"
                    f" attempts, {lag} s late (last error: {escape_cut(job.last_error or 'unknown', 200)}). See /metrics for the backlog."
                )
                queries.enqueue(session, "slack.alert", {"text": text}, now=now)
        except IntegrityError:
            return

    def _store_ts(self, rendered: blocks.DraftCard, channel: str, ts: str) -> None:
        with transaction(self.rt.engine) as session:
            queries.update_draft(
                session, rendered.id, where={"slack_ts": None}, slack_channel=channel, slack_ts=ts
            )
        # A change committed while the post was in flight found no ts to update: render it now.
        current = cards.load_card(self.rt, rendered.id)
        if current is not None and current[0] != rendered:
            with transaction(self.rt.engine) as session:
                queries.enqueue(session, "slack.render", {"draft_id": rendered.id}, now=self.rt.clock())

    async def thread(self, job: OutboxJob) -> None:
        """A reply in the draft message's thread (e.g. the diff of an edit)."""
        payload = json.loads(job.payload)
        loaded = await asyncio.to_thread(cards.load_card, self.rt, payload["draft_id"])
        if loaded is None:
            return
        _, place = loaded
        if place.ts is None:
            raise RetryLater("draft message not posted yet", retry_after=2)
        try:
            await self._post_once(job, place.channel, text=payload["text"], thread_ts=place.ts)
        except SlackApiError as exc:
            raise classify(exc) from None

    async def alert(self, job: OutboxJob) -> None:
        """A line in the alerts channel (pause, caps, offline agents, delivery failures)."""
        channel = self.rt.config.alerts_channel
        if channel is None:
            return
        text = json.loads(job.payload)["text"]
        try:
            await self.pacer.wait(channel)
            await self._post_once(job, channel, text=text)
        except SlackApiError as exc:
            raise classify(exc) from None

    async def _post_once(
        self, job: OutboxJob, channel: str, *, text: str, thread_ts: str | None = None
    ) -> None:
        """Post the job's message, unless an earlier attempt of the job already did (Slack took the
        post, then the answer was lost or the process died before the job was marked done)."""
        if job.attempts > 1:
            earlier = await self._recent_messages(job, channel, thread_ts)
            if any(_event_payload(m, JOB_EVENT).get("job_id") == str(job.id) for m in earlier):
                return
        await self.client.chat_postMessage(
            channel=channel,
            text=text,
            thread_ts=thread_ts,
            metadata={"event_type": JOB_EVENT, "event_payload": {"job_id": str(job.id)}},
            unfurl_links=False,
            unfurl_media=False,
        )

    async def render_gave_up(self, job: OutboxJob, error: str) -> None:
        draft_id = json.loads(job.payload).get("draft_id")

        def enqueue() -> None:
            with transaction(self.rt.engine) as session:
                queries.enqueue(
                    session,
                    "slack.alert",
                    {
                        "text": f":warning: Could not deliver the Slack message of draft `{draft_id}`: {escape_cut(error, 300)}"
                    },
                    now=self.rt.clock(),
                )

        await asyncio.to_thread(enqueue)
