"""Reads on threads of their own, so they answer while writers wait on a lock.

Blocking database work runs on threads: `asyncio.to_thread`, the event loop's default pool, which
has 6 threads on a 2-core host. When something outside this process holds a lock every write
needs (another process in SQLite's write lock, a PostgreSQL row or advisory lock held by a
migration or a stuck session), each write waits up to `storage.db.LOCK_WAIT_MS`; a handful of
waiting writes (heartbeats, outbox records, clicks) fills that pool, and a read that needs no lock
would queue behind them for as long (59 s measured for `GET /v1/agents/me` behind a held SQLite
lock). The agent API's reads, `/metrics` and `/readyz` run here instead, on a pool of their own.

Only functions that open `transaction(write=False)` (or read through a plain connection) belong
here: a write on this pool would bring the queueing back.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

# Fewer than the engine's 20 connections less the default pool's 6, so on PostgreSQL (where a
# waiting write holds its connection) reads still find a free connection.
READ_THREADS = 8

P = ParamSpec("P")
T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:  # made on first use: nothing runs at import time
            _pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="countersign-read")
        return _pool


async def read(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread(fn, ...)` on the read pool, with the caller's context (the request id)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_executor(), call)
