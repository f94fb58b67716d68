"""The agent API on the wire: request shapes, the retry policy and error answers, shared by the
sync and async clients.

A submission's idempotency key is made once, before the first attempt, and sent again on every
retry. Only requests that are safe to replay are re-sent after "sent, no answer"; a connection
that never opened is always safe to retry.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from countersign_client.errors import Unreachable, api_error

USER_AGENT = "countersign-client/0.1.0"

Amount = Decimal | str | int


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    extra_timeout: float = 0.0
    replay_safe: bool = True  # may be re-sent after "sent, no answer"
    retry_conflict: bool = False  # 409 means "the same key is still in flight"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as delay-seconds or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _path_id(draft_id: str) -> str:
    if not draft_id:
        raise ValueError("a draft id is required")
    return quote(draft_id, safe="")


def format_amount(amount: Amount | None) -> str | None:
    if amount is None:
        return None
    if isinstance(amount, str):
        return amount
    if isinstance(amount, float):
        raise TypeError("pass money as Decimal or str, never float")
    return format(Decimal(amount), "f")


class Core:
    """What the sync and async clients share: request shapes, retry policy, answer parsing."""

    def __init__(
        self,
        token: str,
        base_url: str,
        *,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_retry_wait: float,
    ) -> None:
        if not token:
            raise ValueError("an agent token is required (see `countersign agents add`)")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}

    # -- request shapes

    @staticmethod
    def _submit_call(
        *,
        category: str,
        summary: str,
        body: str,
        context: str | None,
        amount: Amount | None,
        currency: str | None,
        payload: Mapping[str, Any] | None,
        callback_url: str | None,
        requested_by: str | None,
        idempotency_key: str | None,
    ) -> tuple[Call, str]:
        key = idempotency_key or f"cs-{uuid.uuid4().hex}"
        fields: dict[str, Any] = {
            "category": category,
            "summary": summary,
            "body": body,
            "context": context,
            "amount": format_amount(amount),
            "currency": currency,
            "payload": dict(payload) if payload is not None else None,
            "callback_url": callback_url,
            "requested_by": requested_by,
        }
        json = {k: v for k, v in fields.items() if v is not None}
        call = Call("POST", "/v1/drafts", json=json, headers={"Idempotency-Key": key}, retry_conflict=True)
        return call, key

    @staticmethod
    def _get_call(draft_id: str, wait: float) -> Call:
        params = {"wait": f"{wait:.3f}"} if wait > 0 else None
        return Call("GET", f"/v1/drafts/{_path_id(draft_id)}", params=params, extra_timeout=wait)

    @staticmethod
    def _done_call(draft_id: str, ok: bool, detail: str | None) -> Call:
        body: dict[str, Any] = {"ok": ok} | ({"detail": detail[:2000]} if detail else {})
        return Call("POST", f"/v1/drafts/{_path_id(draft_id)}/done", json=body, replay_safe=False)

    @staticmethod
    def _cancel_call(draft_id: str) -> Call:
        return Call("DELETE", f"/v1/drafts/{_path_id(draft_id)}", replay_safe=False)

    # -- retry policy

    def _backoff(self, attempt: int) -> float:
        base = min(8.0, self.backoff * 2.0**attempt)
        return base / 2 + random.uniform(0, base / 2)

    def _retry_delay(self, call: Call, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if attempt >= self.max_retries:
            return None
        if response is None:
            return self._backoff(attempt)
        if response.status_code in (429, 503):
            after = retry_after_seconds(response.headers.get("Retry-After"))
            if after is None:
                return self._backoff(attempt)
            return after if after <= self.max_retry_wait else None
        if response.status_code == 409 and call.retry_conflict:
            return self._backoff(attempt)
        return None

    @staticmethod
    def _retryable_error(call: Call, error: httpx.TransportError) -> bool:
        never_sent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return never_sent or call.replay_safe

    def _request_timeout(self, call: Call) -> httpx.Timeout:
        return httpx.Timeout(self.timeout + call.extra_timeout, connect=min(self.timeout, 5.0))

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if 200 <= response.status_code < 300:
            return response.json()
        try:
            error = response.json()["error"]
            code, message, field_ = error.get("code"), str(error.get("message", "")), error.get("field")
        except (ValueError, KeyError, TypeError, AttributeError):
            code, message, field_ = None, response.text[:300] or response.reason_phrase, None
        after = retry_after_seconds(response.headers.get("Retry-After"))
        raise api_error(response.status_code, code, message, field_, after)

    def _unreachable(self, call: Call, error: httpx.TransportError) -> Unreachable:
        return Unreachable(
            f"Countersign at {self.base_url} did not answer {call.method} {call.path}: "
            f"{type(error).__name__}: {error}"
        )
