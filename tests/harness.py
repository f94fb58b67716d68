"""An in-process Countersign wired to the Slack double and a webhook receiver, for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col
from standardwebhooks import Webhook

from bot import agents, audit, digest
from bot.app import Options, create_app
from bot.runtime import Runtime
from bot.settings import load_settings
from handlers import ids
from handlers.agent_api import RUNTIME
from storage.db import transaction
from storage.tables import Draft, ScheduleClaim
from tests.conftest import SIGNING_SECRET, make_env, write_config
from tests.doubles import signing
from tests.doubles.receiver import Received, Receiver
from tests.doubles.slack_api import SlackDouble

T = TypeVar("T")


def blocks_text(message: dict[str, Any]) -> str:
    """A Slack message's blocks as one searchable string."""
    return json.dumps(message.get("blocks") or [], ensure_ascii=False)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → each sample's value by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


USERS: dict[str, dict[str, Any]] = {
    "U0ALICE": {"name": "alice"},
    "U0BOB": {"name": "bob"},
    "U0CAROL": {"name": "carol"},
    "U0ADMIN": {"name": "admin", "is_admin": True},
    "U0OUT": {"name": "outsider"},
    "U0GUEST": {"name": "guest", "is_restricted": True},
    "U0GONE": {"name": "gone", "deleted": True},
}


# The Slack client's timeout in these tests; a scripted "timeout" fault holds its answer longer.
SLACK_TIMEOUT = 3
HELD = SLACK_TIMEOUT + 2


class ShiftedClock:
    """Real time plus an offset the test can push forward (expiry, leases).

    COUNTERSIGN_TEST_HOURS_AHEAD starts every harness that many hours ahead, to run the tests as
    if at another hour of the day (the digest is due from 09:00 New York time, days end at
    midnight): `COUNTERSIGN_TEST_HOURS_AHEAD=15 pytest tests/test_digest.py`.
    """

    def __init__(self) -> None:
        self.offset = timedelta(hours=float(os.environ.get("COUNTERSIGN_TEST_HOURS_AHEAD", "0")))

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **kwargs: float) -> None:
        self.offset += timedelta(**kwargs)


def edit_values(body: str, amount: str = "30.00") -> dict[str, Any]:
    """The Edit modal's state values: the reply text and the amount as a reviewer left them."""
    return {
        ids.EDIT_BODY_BLOCK: {ids.EDIT_BODY_INPUT: {"type": "plain_text_input", "value": body}},
        ids.EDIT_AMOUNT_BLOCK: {ids.EDIT_AMOUNT_INPUT: {"type": "plain_text_input", "value": amount}},
    }


def _claim_todays_digest(rt: Runtime, now: datetime) -> None:
    """Claim the digest that `digest.claim_due` would post today (yesterday's), as if posted."""
    yesterday = now.astimezone(rt.config.timezone).date() - timedelta(days=1)
    name = digest.claim_name(yesterday)
    with transaction(rt.engine) as session:
        if session.get(ScheduleClaim, name) is None:  # a restarted harness finds its own claim
            session.add(ScheduleClaim(name=name, claimed_by="harness", claimed_at=now))


def installed_days_ago(rt: Runtime, now: datetime, days: int = 3) -> None:
    """Give a fresh database an audit event `days` ago, as an installation that old has: the
    scheduled digest reports only days the installation existed on (digest._existed_on)."""
    with transaction(rt.engine, audited=True) as session:
        audit.append(
            session, at=now - timedelta(days=days), actor="test", action="test.installed", subject="-"
        )


@dataclass
class Harness:
    client: TestClient[Any, Any]
    slack: SlackDouble
    executor: Receiver
    callbacks: Receiver
    rt: Runtime
    clock: ShiftedClock
    token: str
    callback_secret: str

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def verify_webhook(self, secret: str, received: Received) -> Any:
        """A signed delivery's JSON, checked as standardwebhooks' `Webhook.verify` checks it but with
        its timestamp judged by this harness's clock: `verify` reads the host's clock, which is hours
        behind the one the server signed with under COUNTERSIGN_TEST_HOURS_AHEAD."""
        headers = {k.lower(): v for k, v in received.headers.items()}
        sent = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        assert abs(self.clock() - sent) <= timedelta(minutes=5), f"signed at {sent}, now {self.clock()}"
        expected = Webhook(secret).sign(headers["webhook-id"], sent, received.body.decode())
        assert expected in headers["webhook-signature"].split(" "), "no matching signature"
        return json.loads(received.body)

    async def submit(self, **fields: Any) -> dict[str, Any]:
        body = {
            "category": "refund",
            "summary": "Refund order 1042",
            "body": "Hi Dana, I've refunded $30.00 to your card.",
            "context": "My order 1042 arrived broken, I want a refund please.",
            "amount": "30.00",
        } | fields
        response = await self.client.post("/v1/drafts", json=body, headers=self.auth())
        assert response.status == 202, await response.text()
        return await response.json()  # type: ignore[no-any-return]

    async def draft(self, draft_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/drafts/{draft_id}", headers=self.auth())
        return await response.json()  # type: ignore[no-any-return]

    async def posted(self, draft_id: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """The Slack message of a draft, once the outbox has posted it."""

        def find() -> dict[str, Any] | None:
            with self.rt.engine.connect() as conn:
                row = conn.execute(
                    sa.select(col(Draft.slack_channel), col(Draft.slack_ts)).where(col(Draft.id) == draft_id)
                ).first()
            if row is None or row[1] is None:
                return None
            return self.slack.messages.get((row[0], row[1]))  # type: ignore[arg-type]  # a posted draft has a channel

        return await eventually(find, timeout)

    async def post_signed(self, request: signing.SignedRequest) -> tuple[int, str]:
        response = await self.client.post("/slack/events", data=request.body, headers=request.headers)
        return response.status, await response.text()

    async def click_payload(
        self, user: str, action_id: str, draft_id: str, *, version: int = 1
    ) -> dict[str, Any]:
        """The ``block_actions`` payload of a click on a posted draft's card, not yet signed."""
        message = await self.posted(draft_id)
        return signing.block_action_payload(
            user_id=user,
            action_id=action_id,
            value=f"{draft_id}:{version}",
            block_id=f"draft:{draft_id}",
            channel_id=message["channel"],
            message_ts=message["ts"],
            response_url=self.slack.response_url(),
        )

    async def click(self, user: str, action_id: str, draft_id: str, *, version: int = 1) -> tuple[int, str]:
        payload = await self.click_payload(user, action_id, draft_id, version=version)
        return await self.post_signed(signing.interactive(SIGNING_SECRET, payload))

    async def submit_view(
        self, user: str, callback_id: str, meta: str, values: dict[str, Any]
    ) -> tuple[int, str]:
        return await self.post_signed(
            signing.view_submission(
                SIGNING_SECRET,
                user_id=user,
                callback_id=callback_id,
                private_metadata=meta,
                state_values=values,
            )
        )

    async def command(self, user: str, text: str) -> str:
        """Run `/agent <text>` as `user`; the private answer it got."""
        before = len(self.slack.responses)
        status, _ = await self.post_signed(
            signing.slash_command(
                SIGNING_SECRET, user_id=user, text=text, response_url=self.slack.response_url(kind="commands")
            )
        )
        assert status == 200
        answer = await eventually(lambda: self.slack.responses[before:])
        return str((answer[0].get("json") or {}).get("text"))

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One scrape of /metrics: each sample's value by (name, sorted labels)."""
        return metric_samples(await (await self.client.get("/metrics")).text())

    def jobs(self, kind: str) -> list[tuple[str, int]]:
        """(status, attempts) of each outbox job of `kind`, oldest first."""
        with self.rt.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT status, attempts FROM outbox_job WHERE kind = :kind ORDER BY id"),
                {"kind": kind},
            ).all()
        return [(str(status), int(attempts)) for status, attempts in rows]

    def alerts(self) -> list[str]:
        return [
            str(c.params.get("text"))
            for c in self.slack.calls("chat.postMessage")
            if c.params.get("channel") == "C0ALERTS"
        ]

    def ephemeral_texts(self) -> list[str]:
        return [str((r.get("json") or {}).get("text")) for r in self.slack.responses] + [
            str(e.get("text")) for e in self.slack.ephemerals
        ]

    async def status(self, draft_id: str, status: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            view = await self.draft(draft_id)
            return view if view["status"] == status else None

        return await eventually_async(check)


async def eventually(probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def eventually_async(probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def harness(
    db_url: str,
    tmp_path: Path,
    *,
    executor_attempts: int = 3,
    extra_config: str = "",
    agent: tuple[str, str] | None = None,
    env: dict[str, str] | None = None,
    digest_due: bool = False,
) -> AsyncIterator[Harness]:
    """Start everything; `agent` (token, callback secret) reuses an agent registered by an earlier run.

    The daily digest is due from 09:00 New York time until it is posted, so a fresh database would
    post one at startup for part of each day only. Unless `digest_due`, the harness starts with
    that digest already claimed, so tests see the same Slack traffic at any hour.
    """
    clock = ShiftedClock()
    slack = SlackDouble(users=USERS, wall=lambda: clock().timestamp())
    executor, callbacks = Receiver(), Receiver()
    await slack.start()
    await executor.start()
    await callbacks.start()
    try:
        config = write_config(tmp_path, executor_url=executor.url + "/refunds", extra=extra_config)
        settings = load_settings(make_env(db_url, config, slack.base_url) | (env or {}))
        options = Options(
            clock=clock,
            outbox_poll=0.02,
            schedule_every=0.05,
            backoff_base=0.02,
            executor_attempts=executor_attempts,
            slack_timeout=SLACK_TIMEOUT,
        )
        app = create_app(settings, options)
        rt = app[RUNTIME]
        if digest_due:
            installed_days_ago(rt, clock())
        else:
            _claim_todays_digest(rt, clock())
        if agent is None:
            registered = agents.add(
                rt,
                name="support-bot",
                categories=["refund", "reply"],
                callback_prefixes=[callbacks.url + "/"],
            )
            agent = (registered.token, registered.callback_secret)
        async with TestClient(TestServer(app)) as client:
            yield Harness(
                client=client,
                slack=slack,
                executor=executor,
                callbacks=callbacks,
                rt=rt,
                clock=clock,
                token=agent[0],
                callback_secret=agent[1],
            )
    finally:
        await callbacks.stop()
        await executor.stop()
        await slack.stop()
