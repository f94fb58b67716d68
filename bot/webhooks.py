"""Outgoing webhooks: the executor call and agent callbacks, signed with Standard Webhooks.

The executor gets the draft id as both `webhook-id` and `Idempotency-Key` on every attempt,
so it can deduplicate; an attempt that was sent but got no answer marks the outcome unknown,
and after the last retry the draft needs reconciliation, never a silent failure.
Every delivery goes through bot/netguard.py: a destination it refuses is a connect failure.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from bot import agents, audit, caps, crashpoints, netguard, policy
from bot.drafts import agent_view, record_change
from bot.mrkdwn import escape, escape_cut
from bot.outbox import NotAttempted, Permanent, RetryLater
from bot.runtime import Runtime
from bot.settings import Executor
from storage import queries
from storage.db import transaction
from storage.tables import Agent, Decision, Draft, OutboxJob

log = logging.getLogger(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
DB_RETRY_SECONDS = 2.0  # an attempt the database kept from being sent waits this long (not counted)
BREAKER_THRESHOLD = 5  # consecutive executor failures before its category goes to manual mode
# 409 is retried too (execute): an executor that deduplicates on Idempotency-Key answers it while
# an earlier request with the same key is still being processed (Stripe does).
RETRYABLE_STATUS = frozenset({408, 425, 429})
MAX_RETRY_AFTER = 3600.0  # a target asking for more is waited on an hour at a time


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value, `v1,<base64 HMAC-SHA256>`.

    `secret` may hold several secrets separated by spaces, as an executor's `secret_env` does
    during a rotation (the new one and the old one): the header then carries one signature per
    secret, space-separated, and a receiver holding either secret verifies the message.
    """
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in (base64.b64decode(one.removeprefix("whsec_")) for one in secret.split())
    )


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "Idempotency-Key": msg_id,
    }


def retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After as delay-seconds or as an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value.strip()), MAX_RETRY_AFTER)
    try:
        return min(MAX_RETRY_AFTER, max(0.0, (parsedate_to_datetime(value) - now).total_seconds()))
    except (TypeError, ValueError):
        return None


@dataclass
class Attempt:
    draft_id: str
    executor: Executor
    body: bytes


class WebhookJobs:
    """Outbox handlers for `executor.call` and `callback.send`; `resolver` (default aiohttp's) is
    what the guard asks for addresses, replaceable by tests."""

    def __init__(self, rt: Runtime, *, resolver: AbstractResolver | None = None) -> None:
        self.rt = rt
        self.resolver = resolver  # None: aiohttp's default, made with the first session
        self._sessions: dict[netguard.Kind, aiohttp.ClientSession] = {}

    def handlers(self) -> dict[str, Any]:
        return {"executor.call": self.execute, "callback.send": self.callback}

    def give_up(self) -> dict[str, Any]:
        return {"executor.call": self.execute_gave_up}

    def http(self, kind: netguard.Kind) -> aiohttp.ClientSession:
        """One session per kind, since the guard's rules differ between executors and callbacks."""
        session = self._sessions.get(kind)
        if session is None or session.closed:
            if self.resolver is None:
                self.resolver = aiohttp.DefaultResolver()
            connector = aiohttp.TCPConnector(
                resolver=netguard.GuardedResolver(kind, self.resolver),
                socket_factory=netguard.guarded_socket,
                # A fresh lookup and connection per delivery: each one is checked, none is reused.
                use_dns_cache=False,
                force_close=True,
            )
            # trust_env=False: a proxy from the environment would connect where the guard never looked.
            session = aiohttp.ClientSession(timeout=TIMEOUT, connector=connector, trust_env=False)
            self._sessions[kind] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        if self.resolver is not None:
            await self.resolver.close()

    async def execute(self, job: OutboxJob) -> None:
        draft_id = json.loads(job.payload)["draft_id"]
        try:
            attempt = await asyncio.to_thread(self._begin, draft_id)
        except SQLAlchemyError as exc:
            # Nothing was sent: a database that fails now and then must not use up the attempts.
            raise NotAttempted(
                f"database failed before the call: {type(exc).__name__}", retry_after=DB_RETRY_SECONDS
            ) from None
        if attempt is None:
            return
        timestamp = int(self.rt.clock().timestamp())
        headers = signed_headers(attempt.executor.secret, draft_id, timestamp, attempt.body)
        try:
            _vet(attempt.executor.url)
            async with self.http("executor").post(
                attempt.executor.url, data=attempt.body, headers=headers, allow_redirects=False
            ) as response:
                # An answer's status is what counts; a body that is not valid text is no reason to
                # think the executor did not answer (and to send the same action again).
                status, text = response.status, (await response.text(errors="replace"))[:500]
                wait = retry_after(response.headers.get("Retry-After"), self.rt.clock())
            crashpoints.reached("after_executor_sent")
        except (aiohttp.ClientConnectorError, netguard.Blocked) as exc:
            # Never connected: the executor cannot have acted.
            await asyncio.to_thread(self._note, draft_id, f"connect failed: {exc}", ambiguous=False)
            raise RetryLater(f"executor unreachable: {exc}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            await asyncio.to_thread(
                self._note, draft_id, f"sent, no answer: {type(exc).__name__}", ambiguous=True
            )
            raise RetryLater(f"executor outcome unknown: {type(exc).__name__}") from None
        if 200 <= status < 300:
            await asyncio.to_thread(self._finish, draft_id, ok=True, error=None)
        elif status == 409:
            # The executor still holds an earlier request with this key: that one may take effect
            # (the outcome is unknown until an answer comes), and the executor is not failing.
            await asyncio.to_thread(
                self._note, draft_id, f"HTTP 409: {text}", ambiguous=True, executor_failed=False
            )
            raise RetryLater("executor busy with the same key", retry_after=wait)
        elif status in RETRYABLE_STATUS or status >= 500:
            await asyncio.to_thread(self._note, draft_id, f"HTTP {status}: {text}", ambiguous=False)
            raise RetryLater(f"executor answered {status}", retry_after=wait)
        else:
            # 3xx (redirects are not followed) and other 4xx: the executor refused; retrying cannot
            # help. After an attempt whose answer never came, _finish records the outcome as unknown.
            await asyncio.to_thread(self._finish, draft_id, ok=False, error=f"HTTP {status}: {text}")
            # The job ends as a permanent failure, not a delivery, in the outbox and in /metrics
            # (its give-up hook finds the draft already settled and changes nothing).
            raise Permanent(f"executor refused: HTTP {status}")

    def _begin(self, draft_id: str) -> Attempt | None:
        """Re-check, in the attempt's own transaction, that the action may still run."""
        with transaction(self.rt.engine) as session:
            draft = session.get(Draft, draft_id)
            if draft is None or draft.status != "approved":
                return None
            category = self.rt.config.categories.get(draft.category)
            if category is None or category.executor is None:
                return None
            agent = session.get(Agent, draft.agent_id)
            controls = queries.get_controls(session, ["pause:all", f"mode:{draft.category}"])
            manual = policy.is_manual(controls.get(f"mode:{draft.category}"), self.rt.clock())
            if agent is None or agent.state == "paused" or "pause:all" in controls or manual:
                # Paused between the claim and now; claims skip such jobs until the hold ends.
                raise NotAttempted("held: agent paused or category manual", retry_after=5)
            queries.update_draft(
                session,
                draft.id,
                where={"status": "approved"},
                execution_attempts=draft.execution_attempts + 1,
                # The previous attempt was sent and its outcome never recorded (a crash, or a
                # database failure after the executor answered): it may have taken effect.
                execution_ambiguous=draft.execution_ambiguous or draft.execution_in_flight,
                execution_in_flight=True,
            )
            approvers = session.exec(
                select(Decision.by).where(Decision.draft_id == draft.id, Decision.action != "reject")
            ).all()
            body = {
                "draft_id": draft.id,
                "category": draft.category,
                "agent": agent.name,
                "payload": json.loads(draft.payload),
                "approved_body": draft.approved_body,
                "amount": agent_view(session, draft)["amount"],
                "currency": draft.currency,
                "approvers": list(dict.fromkeys(approvers)),
            }
            return Attempt(draft.id, category.executor, json.dumps(body, sort_keys=True).encode())

    def _note(self, draft_id: str, error: str, *, ambiguous: bool, executor_failed: bool = True) -> None:
        with transaction(self.rt.engine, audited=True) as session:  # the breaker may trip
            values: dict[str, Any] = {
                "execution_last_error": error[:500],
                "execution_in_flight": False,
                "updated_at": self.rt.clock(),
            }
            if ambiguous:
                values["execution_ambiguous"] = True
            if queries.update_draft(session, draft_id, where={"status": "approved"}, **values):
                # The card shows the attempts so far and the last error while the retries go on
                # (and while the breaker holds them), not "pending after 0 attempts".
                queries.enqueue(session, "slack.render", {"draft_id": draft_id}, now=self.rt.clock())
            draft = session.get(Draft, draft_id)
            if draft is not None and executor_failed:
                self._executor_health(session, draft.category, ok=False, error=error)

    def _executor_health(
        self, session: Session, category: str, *, ok: bool, error: str | None = None
    ) -> None:
        """Count consecutive executor failures per category; at the limit, send the category to humans."""
        key = f"executor_failures:{category}"
        now = self.rt.clock()
        if ok:
            if queries.get_control(session, key) is not None:
                queries.set_control(session, key, None, by="system:executor", at=now)
            return
        failures = (queries.get_control(session, key) or {}).get("count", 0) + 1
        mode = queries.get_control(session, f"mode:{category}")
        if failures < BREAKER_THRESHOLD or (mode is not None and mode.get("until") is None):
            queries.set_control(session, key, {"count": failures}, by="system:executor", at=now)
            return
        # Trip (replacing a time-boxed manual mode) and count the next run of failures from zero.
        queries.set_control(session, key, None, by="system:executor", at=now)
        value = {"mode": "manual", "by": "system:executor-breaker", "until": None}
        queries.set_control(session, f"mode:{category}", value, by="system:executor-breaker", at=now)
        audit.append(
            session,
            at=now,
            actor="system:executor-breaker",
            action="category.manual",
            subject=f"category:{category}",
            after={"consecutive_failures": failures, "last_error": error},
        )
        queries.enqueue(
            session,
            "slack.alert",
            {
                "text": f":rotating_light: The *{category}* executor failed {failures} times in a row"
                f" (last: {escape_cut(error or '', 200)}). *{category}* is now in manual mode;"
                f" an admin returns it with `/agent review {category}`."
            },
            now=now,
        )

    def _finish(self, draft_id: str, *, ok: bool, error: str | None, answered: bool = True) -> None:
        """Record the execution's end. A refusal that follows an attempt whose answer never came
        says nothing about that attempt (it may have taken effect): the outcome is unknown, the
        draft needs reconciliation and its cap reservation stays. `answered=False` is a give-up
        with no answer to the last attempt: if that one was sent and never recorded, it is unknown too."""
        now = self.rt.clock()
        with transaction(self.rt.engine, audited=True) as session:
            draft = session.get(Draft, draft_id)
            if draft is None:
                return
            unknown = not ok and (draft.execution_ambiguous or (not answered and draft.execution_in_flight))
            to = "executed" if ok else ("needs_reconciliation" if unknown else "failed")
            moved = queries.transition(
                session,
                draft_id,
                from_=("approved",),
                to=to,
                updated_at=now,
                execution_status="succeeded" if ok else to,
                execution_in_flight=False,
                execution_last_error=error[:500] if error else draft.execution_last_error if not ok else None,
            )
            if not moved:
                return
            if not unknown:  # unanswered attempts were counted as they happened (_note)
                self._executor_health(session, draft.category, ok=ok, error=error)
            if to == "failed" and draft.reservation_day:
                owner = session.get(Agent, draft.agent_id)
                caps.release(
                    session,
                    category=draft.category,
                    agent=owner.name if owner else "?",
                    day=draft.reservation_day,
                    amount_minor=draft.amount_minor or 0,
                )
            record_change(
                session,
                self.rt,
                draft,
                actor="system:executor",
                action=f"draft.{to}",
                before={"status": "approved"},
                after={"status": to, "error": error},
                now=now,
            )
            if not ok:
                what = "outcome is unknown: check the target system before retrying" if unknown else "failed"
                queries.enqueue(
                    session,
                    "slack.alert",
                    {
                        "text": f":rotating_light: Execution of draft `{draft_id}` ({draft.category}) {what}: {escape(error or '')}"
                    },
                    now=now,
                )
            crashpoints.reached("inside_record")
        self.rt.wake_outbox()

    async def execute_gave_up(self, job: OutboxJob, error: str) -> None:
        draft_id = json.loads(job.payload)["draft_id"]

        # Failed, or unknown when an attempt's answer never came (_finish tells them apart).
        await asyncio.to_thread(
            self._finish,
            draft_id,
            ok=False,
            error=f"gave up after {job.attempts} attempts: {error}",
            answered=False,
        )

    async def callback(self, job: OutboxJob) -> None:
        """Tell the agent its draft changed; a failing callback is retried but never blocks the draft."""
        payload = json.loads(job.payload)

        def load() -> tuple[str, str, bytes] | None:
            with transaction(self.rt.engine, write=False) as session:
                draft = session.get(Draft, payload["draft_id"])
                if draft is None or not draft.callback_url:
                    return None
                agent = session.get(Agent, draft.agent_id)
                if agent is None:
                    return None
                # The draft as the change left it; a job queued before it was stored has none.
                view = payload.get("draft") or agent_view(session, draft)
                body = {"type": payload["event"], "draft": view}
                secrets = agents.callback_secrets(agent, self.rt.clock())
                return draft.callback_url, secrets, json.dumps(body).encode()

        loaded = await asyncio.to_thread(load)
        if loaded is None:
            return
        url, secret, body = loaded
        msg_id = f"cb_{job.id}"
        headers = signed_headers(secret, msg_id, int(self.rt.clock().timestamp()), body)
        try:
            _vet(url)
            async with self.http("callback").post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                wait = retry_after(response.headers.get("Retry-After"), self.rt.clock())
        except (aiohttp.ClientConnectorError, netguard.Blocked) as exc:
            raise RetryLater(f"callback not sent: {exc}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryLater(f"callback failed: {type(exc).__name__}") from None
        if 200 <= status < 300:
            return
        if status in RETRYABLE_STATUS or status >= 500:
            raise RetryLater(f"callback answered {status}", retry_after=wait)
        # 3xx (redirects are not followed) and other 4xx: the agent's endpoint refused this callback.
        raise Permanent(f"callback answered {status}")


def _vet(url: str) -> None:
    """The guard's checks that need no DNS, again at delivery: a URL stored before them is refused too."""
    try:
        netguard.check_url(url)
    except ValueError as exc:
        raise netguard.Blocked(f"blocked destination: {exc}") from None
