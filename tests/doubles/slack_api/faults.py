"""Fault injection: scripted 429s with Retry-After, 5xx answers, Slack-level errors and slow answers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal


@dataclass
class _Fault:
    status: int | Literal["timeout"]
    remaining: int
    retry_after: int | None
    error: str
    delay: float
    channel: str | None = None  # only calls to this channel take the fault


class _Faults:
    """Part of SlackDouble: the scripted faults, taken by the next matching calls."""

    _faults: dict[str, deque[_Fault]]

    def fail(
        self,
        method: str,
        *,
        status: int | Literal["timeout"] = 429,
        times: int = 1,
        retry_after: int | None = 1,
        error: str | None = None,
        delay: float = 0.0,
        channel: str | None = None,
    ) -> None:
        """Script the next ``times`` calls of ``method`` (``"*"`` = any Web API method), or with
        ``channel`` only those calls whose ``channel`` argument is that channel (so a test is not
        disturbed by other posts, such as a digest that comes due while it runs).

        ``method="response_url"`` scripts POSTs to the response_url sink instead (text bodies).

        ``status=429`` answers ``ratelimited`` with ``Retry-After`` (omitted when ``retry_after`` is
        None); other codes answer ``{"ok": false, "error": error}``, so ``status=200,
        error="channel_not_found"`` scripts a Slack-level error. ``status="timeout"`` performs the
        call normally (side effects happen) and holds the answer back for ``delay`` seconds, which
        is what a client that times out and retries must survive.
        """
        default_error = (
            "ratelimited" if status == 429 else "fatal_error" if status == 200 else "internal_error"
        )
        fault = _Fault(status, times, retry_after, error or default_error, delay, channel)
        self._faults.setdefault(method, deque()).append(fault)

    def _take_fault(self, method: str, channel: object = None) -> _Fault | None:
        # "*" covers Web API methods only; response_url posts are scripted by name.
        for key in (method, "*") if method != "response_url" else (method,):
            for fault in self._faults.get(key, ()):
                if fault.channel is not None and fault.channel != channel:
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults[key].remove(fault)
                return fault
        return None
