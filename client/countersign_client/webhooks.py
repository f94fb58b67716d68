"""Verify Countersign's outgoing webhooks (executor calls, agent callbacks): Standard Webhooks.

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256 with the base64 key
after `whsec_`; `webhook-signature` holds space-separated `v1,<base64>` values. Stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from countersign_client.errors import WebhookVerificationError

TOLERANCE_SECONDS = 300


@dataclass(frozen=True)
class WebhookMessage:
    """A verified webhook. `idempotency_key` is stable across retries of one delivery (for an
    execution it is the draft id): deduplicate on it. It is the signed `webhook-id`, never the
    unsigned `Idempotency-Key` header, so a replay with an altered header cannot act twice."""

    id: str
    timestamp: datetime
    idempotency_key: str
    payload: Any


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not whsec_ + base64") from None


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value Countersign sends for this message (useful in tests)."""
    digest = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(
    secret: str,
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> WebhookMessage:
    """Check the signature and freshness of a webhook and return it parsed.

    Pass the raw request body exactly as received (not re-serialized JSON) and its headers.
    Raises `WebhookVerificationError` on anything wrong; answer such a request with 401.
    """
    raw = body.encode() if isinstance(body, str) else body
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or in the future")
    expected = sign_webhook(secret, msg_id, timestamp, raw).encode()
    valid = any(
        hmac.compare_digest(expected, candidate.encode())
        for candidate in signatures.split()
        if candidate.startswith("v1,")
    )
    if not valid:
        raise WebhookVerificationError("no valid v1 signature")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    return WebhookMessage(
        id=msg_id,
        timestamp=datetime.fromtimestamp(timestamp, UTC),
        idempotency_key=msg_id,
        payload=payload,
    )
