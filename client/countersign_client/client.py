"""Sync and async clients of the Countersign agent API, with retries that never duplicate a draft.

A submission's idempotency key is made once, before the first attempt, and sent again on every
retry, so a request that reached the server but lost its answer cannot create a second draft.
429 and 503 are retried after the server's Retry-After; when Countersign stays unreachable the
call raises `Unreachable`, so nothing gated on it runs (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from countersign_client.models import AgentStatus, Draft, Submission
from countersign_client.protocol import Amount, Call, Core

log = logging.getLogger("countersign_client")

DEFAULT_URL = "http://127.0.0.1:3000"
MAX_WAIT = 30.0  # the server's long-poll limit per request


class Client(Core):
    """Blocking client of the agent API.

    `Client(token, base_url)`; or `Client.from_env()` with COUNTERSIGN_AGENT_TOKEN and
    COUNTERSIGN_URL. Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            token,
            base_url,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_retry_wait=max_retry_wait,
        )
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, transport=transport, follow_redirects=False
        )

    @classmethod
    def from_env(cls, **options: Any) -> Self:
        return cls(
            os.environ["COUNTERSIGN_AGENT_TOKEN"], os.environ.get("COUNTERSIGN_URL", DEFAULT_URL), **options
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    headers=dict(call.headers),
                    timeout=self._request_timeout(call),
                )
            except httpx.TransportError as error:
                delay = self._retry_delay(call, attempt, None) if self._retryable_error(call, error) else None
                if delay is None:
                    raise self._unreachable(call, error) from error
                log.info("retrying %s %s in %.2fs after %r", call.method, call.path, delay, error)
            else:
                delay = self._retry_delay(call, attempt, response)
                if delay is None:
                    return self._answer(response)
                log.info(
                    "retrying %s %s in %.2fs after %d", call.method, call.path, delay, response.status_code
                )
            time.sleep(delay)
            attempt += 1

    def submit(
        self,
        *,
        category: str,
        summary: str,
        body: str,
        context: str | None = None,
        amount: Amount | None = None,
        currency: str | None = None,
        payload: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        requested_by: str | None = None,
        idempotency_key: str | None = None,
    ) -> Submission:
        """Submit a draft for review. Pass your own `idempotency_key` (e.g. the ticket id) to
        attach to the same draft again after a restart; otherwise one is made for this call."""
        call, key = self._submit_call(
            category=category,
            summary=summary,
            body=body,
            context=context,
            amount=amount,
            currency=currency,
            payload=payload,
            callback_url=callback_url,
            requested_by=requested_by,
            idempotency_key=idempotency_key,
        )
        return Submission.from_json(self._send(call), key)

    def get(self, draft_id: str) -> Draft:
        return Draft.from_json(self._send(self._get_call(draft_id, 0)))

    def wait(self, draft_id: str, timeout: float = 300.0) -> Draft:
        """Long-poll until the draft leaves `pending` or `timeout` seconds pass; the draft as it is then."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
            draft = Draft.from_json(self._send(self._get_call(draft_id, chunk)))
            if draft.decided or time.monotonic() >= deadline:
                return draft

    def cancel(self, draft_id: str) -> Draft:
        """Withdraw a pending draft (409 `Conflict` once it is decided)."""
        return Draft.from_json(self._send(self._cancel_call(draft_id)))

    def done(self, draft_id: str, ok: bool = True, detail: str | None = None) -> Draft:
        """Report that you carried out an approved action (categories without an executor)."""
        return Draft.from_json(self._send(self._done_call(draft_id, ok, detail)))

    def me(self) -> AgentStatus:
        return AgentStatus.from_json(self._send(Call("GET", "/v1/agents/me")))

    def heartbeat(self) -> None:
        self._send(Call("POST", "/v1/heartbeat"))


class AsyncClient(Core):
    """The same API as `Client`, for asyncio code: `async with AsyncClient(token, url) as cs:`."""

    def __init__(
        self,
        token: str,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            token,
            base_url,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_retry_wait=max_retry_wait,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, transport=transport, follow_redirects=False
        )

    @classmethod
    def from_env(cls, **options: Any) -> Self:
        return cls(
            os.environ["COUNTERSIGN_AGENT_TOKEN"], os.environ.get("COUNTERSIGN_URL", DEFAULT_URL), **options
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    headers=dict(call.headers),
                    timeout=self._request_timeout(call),
                )
            except httpx.TransportError as error:
                delay = self._retry_delay(call, attempt, None) if self._retryable_error(call, error) else None
                if delay is None:
                    raise self._unreachable(call, error) from error
                log.info("retrying %s %s in %.2fs after %r", call.method, call.path, delay, error)
            else:
                delay = self._retry_delay(call, attempt, response)
                if delay is None:
                    return self._answer(response)
                log.info(
                    "retrying %s %s in %.2fs after %d", call.method, call.path, delay, response.status_code
                )
            await asyncio.sleep(delay)
            attempt += 1

    async def submit(
        self,
        *,
        category: str,
        summary: str,
        body: str,
        context: str | None = None,
        amount: Amount | None = None,
        currency: str | None = None,
        payload: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        requested_by: str | None = None,
        idempotency_key: str | None = None,
    ) -> Submission:
        """See `Client.submit`."""
        call, key = self._submit_call(
            category=category,
            summary=summary,
            body=body,
            context=context,
            amount=amount,
            currency=currency,
            payload=payload,
            callback_url=callback_url,
            requested_by=requested_by,
            idempotency_key=idempotency_key,
        )
        return Submission.from_json(await self._send(call), key)

    async def get(self, draft_id: str) -> Draft:
        return Draft.from_json(await self._send(self._get_call(draft_id, 0)))

    async def wait(self, draft_id: str, timeout: float = 300.0) -> Draft:  # noqa: ASYNC109 (a server-side wait budget)
        """See `Client.wait`."""
        deadline = time.monotonic() + timeout
        while True:
            chunk = min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
            draft = Draft.from_json(await self._send(self._get_call(draft_id, chunk)))
            if draft.decided or time.monotonic() >= deadline:
                return draft

    async def cancel(self, draft_id: str) -> Draft:
        return Draft.from_json(await self._send(self._cancel_call(draft_id)))

    async def done(self, draft_id: str, ok: bool = True, detail: str | None = None) -> Draft:
        return Draft.from_json(await self._send(self._done_call(draft_id, ok, detail)))

    async def me(self) -> AgentStatus:
        return AgentStatus.from_json(await self._send(Call("GET", "/v1/agents/me")))

    async def heartbeat(self) -> None:
        await self._send(Call("POST", "/v1/heartbeat"))
