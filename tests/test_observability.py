from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

from bot import logs
from handlers import ids
from tests.conftest import BOT_TOKEN, EXECUTOR_SECRET, SIGNING_SECRET
from tests.harness import eventually, harness, metric_samples


async def test_metrics_report_drafts_decisions_outbox_and_caps(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as h:
        created = await h.submit()
        await h.submit(summary="waiting")
        await h.click("U0ALICE", ids.APPROVE, created["id"])
        await h.status(created["id"], "executed")
        response = await h.client.get("/metrics")
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        values = metric_samples(await response.text())
    assert values[("countersign_drafts", (("category", "refund"), ("status", "executed")))] == 1
    assert values[("countersign_pending_drafts", ())] == 1
    assert values[("countersign_decisions_total", (("action", "approve"), ("category", "refund")))] == 1
    assert values[("countersign_time_to_decision_seconds_count", (("category", "refund"),))] == 1
    assert values[("countersign_cap_usage_ratio", (("cap", "amount"), ("category", "refund")))] == 30 / 500
    assert values[("countersign_paused_agents", ())] == 0
    assert (
        values[("countersign_delivery_attempts_total", (("outcome", "delivered"), ("target", "executor")))]
        >= 1
    )
    assert ("countersign_outbox_lag_seconds", ()) in values


async def test_slack_delivery_failures_show_in_metrics(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as h:
        # Only the draft's channel: the faults are for its post, not any other message.
        h.slack.fail("chat.postMessage", status=500, times=3, channel="C0REFUNDS")
        created = await h.submit()
        await h.posted(created["id"])

        retried = ("countersign_delivery_attempts_total", (("outcome", "retry"), ("target", "slack")))
        delivered = ("countersign_delivery_attempts_total", (("outcome", "delivered"), ("target", "slack")))
        # The message is stored a moment before the delivery is counted: poll the scrape.
        for _ in range(200):
            values = await h.metrics()
            if values.get(delivered):
                break
            await asyncio.sleep(0.05)
        assert values[retried] >= 1 and values[delivered] >= 1


async def test_secrets_never_appear_in_logs_or_error_responses(db_url: str, tmp_path: Path) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("DEBUG", stream)
    bodies: list[str] = []
    try:
        async with harness(db_url, tmp_path) as h:
            secrets = [h.token, h.callback_secret, EXECUTOR_SECRET, SIGNING_SECRET, BOT_TOKEN]
            for token in (h.token + "x", "cs_" + "A" * 40, h.token):
                response = await h.client.post(
                    "/v1/drafts", json={"bad": True}, headers={"Authorization": f"Bearer {token}"}
                )
                bodies.append(await response.text())
            h.executor.script(400)
            created = await h.submit(callback_url=h.callbacks.url + "/hook")
            await h.click("U0ALICE", ids.APPROVE, created["id"])
            await h.status(created["id"], "failed")
            await eventually(lambda: h.callbacks.requests)
            logging.getLogger("test").error("leak attempt %s and Bearer %s", h.callback_secret, h.token)
            response = await h.client.post(
                "/slack/events", data=b"payload=x", headers={"X-Slack-Signature": "v0=1"}
            )
            bodies.append(await response.text())
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    output = stream.getvalue()
    assert "leak attempt [redacted]" in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines and all("request_id" in line for line in lines)
    for secret in secrets:
        assert secret not in output
        assert all(secret not in body for body in bodies)
