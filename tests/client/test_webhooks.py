from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from countersign_client import WebhookVerificationError, sign_webhook, verify_webhook
from standardwebhooks import Webhook

from bot.webhooks import signed_headers
from tests.client.conftest import load_example
from tests.conftest import EXECUTOR_SECRET

BODY = json.dumps(
    {"draft_id": "d_1", "amount": "30.00", "currency": "USD", "approved_body": "Refunded."}
).encode()


def test_verify_accepts_what_the_server_signs() -> None:
    now = int(time.time())
    headers = signed_headers(EXECUTOR_SECRET, "d_1", now, BODY)
    message = verify_webhook(EXECUTOR_SECRET, BODY, headers)
    assert message.id == message.idempotency_key == "d_1"
    assert message.payload["amount"] == "30.00" and int(message.timestamp.timestamp()) == now
    # Same scheme as the reference implementation, both ways.
    assert Webhook(EXECUTOR_SECRET).verify(BODY, headers)["draft_id"] == "d_1"
    assert headers["webhook-signature"] == sign_webhook(EXECUTOR_SECRET, "d_1", now, BODY)


def test_verify_rejects_tampering_staleness_and_missing_headers() -> None:
    now = int(time.time())
    headers = signed_headers(EXECUTOR_SECRET, "d_1", now, BODY)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(EXECUTOR_SECRET, BODY.replace(b"30.00", b"3000.00"), headers)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(EXECUTOR_SECRET, BODY, headers | {"webhook-id": "d_2"})
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook("whsec_" + "A" * 32, BODY, headers)
    stale = signed_headers(EXECUTOR_SECRET, "d_1", now - 600, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(EXECUTOR_SECRET, BODY, stale)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(EXECUTOR_SECRET, BODY, {"webhook-id": "d_1"})
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_webhook(EXECUTOR_SECRET, BODY, upper).id == "d_1"


def test_during_a_rotation_both_secrets_verify_and_no_other() -> None:
    # The executor's secret_env holds "new old" while receivers move to the new secret.
    new, old = "whsec_" + base64.b64encode(b"n" * 24).decode(), EXECUTOR_SECRET
    headers = signed_headers(f"{new} {old}", "d_1", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (new, old):
        assert Webhook(secret).verify(BODY, headers)["draft_id"] == "d_1"
        assert verify_webhook(secret, BODY, headers).id == "d_1"
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook("whsec_" + "A" * 32, BODY, headers)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(new, BODY.replace(b"30.00", b"3000.00"), headers)
    # After the rotation, the old secret alone no longer verifies what the new one signs.
    after = signed_headers(new, "d_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(old, BODY, after)


def test_unsigned_idempotency_header_cannot_change_the_dedup_key() -> None:
    headers = signed_headers(EXECUTOR_SECRET, "d_1", int(time.time()), BODY)
    replayed = verify_webhook(EXECUTOR_SECRET, BODY, headers | {"Idempotency-Key": "something-new"})
    assert replayed.idempotency_key == "d_1"


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    example = load_example("client/examples/dedup_executor.py")
    state = example.Executor(EXECUTOR_SECRET, str(tmp_path / "effects.db"))
    server = example.make_server(state, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/refunds", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def refunds(state: Any) -> list[tuple[str, ...]]:
    import sqlite3

    with sqlite3.connect(state.db_path) as db:
        rows = db.execute("SELECT draft_id, amount FROM refunds ORDER BY draft_id").fetchall()
    db.close()
    return [tuple(r) for r in rows]


def test_example_executor_acts_once_per_draft_under_concurrent_redelivery(executor: tuple[str, Any]) -> None:
    url, state = executor
    headers = signed_headers(EXECUTOR_SECRET, "d_1", int(time.time()), BODY)

    def deliver(_: int) -> httpx.Response:
        return httpx.post(url, content=BODY, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(deliver, range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 7
    assert refunds(state) == [("d_1", "30.00")]

    other = json.dumps({"draft_id": "d_2", "amount": "5.00"}).encode()
    fresh = httpx.post(
        url, content=other, headers=signed_headers(EXECUTOR_SECRET, "d_2", int(time.time()), other)
    )
    assert fresh.status_code == 200 and refunds(state) == [("d_1", "30.00"), ("d_2", "5.00")]


def test_example_executor_refuses_unsigned_requests(executor: tuple[str, Any]) -> None:
    url, state = executor
    forged = httpx.post(url, content=BODY, headers={"webhook-id": "d_1", "webhook-timestamp": "1"})
    assert forged.status_code == 401 and refunds(state) == []
