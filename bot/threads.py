"""The server's thread pools: one for blocking work (database writes among it), one for reads.

Blocking database work runs on threads. When something outside this process holds a lock every
write needs (another process in SQLite's write lock, a PostgreSQL row or advisory lock held by a
migration or a stuck session), each write waits up to `storage.db.LOCK_WAIT_MS`; a handful of
waiting writes (heartbeats, outbox records, clicks) fills a pool, and a read that needs no lock
would queue behind them for as long (59 s measured for `GET /v1/agents/me` behind a held SQLite
lock). So the agent API's reads, `/metrics` and `/readyz` run on a pool of their own (`read`).

Sizes: on PostgreSQL a waiting write holds its connection, so the two pools together never have
more threads than the engine has connections (storage/db.py: 10 + 10 overflow). The event loop's
default pool, which `asyncio.to_thread` uses, is set to WORK_THREADS as the server starts
(`use_work_pool`); left alone it would grow with the host's cores (up to 32).

Only functions that open `transaction(write=False)` (or read through `storage.db.reader`) belong
on the read pool: a write there would bring the queueing back.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

WORK_THREADS = 12
READ_THREADS = 8

P = ParamSpec("P")
T = TypeVar("T")

_reads: ThreadPoolExecutor | None = None
_reads_lock = threading.Lock()


def use_work_pool(loop: asyncio.AbstractEventLoop) -> None:
    """Give `loop` a default pool of WORK_THREADS threads (the server's, at start)."""
    loop.set_default_executor(ThreadPoolExecutor(max_workers=WORK_THREADS, thread_name_prefix="countersign"))


def _read_pool() -> ThreadPoolExecutor:
    global _reads
    with _reads_lock:
        if _reads is None:  # made on first use: nothing runs at import time
            _reads = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="countersign-read")
        return _reads


async def read(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread(fn, ...)` on the read pool, with the caller's context (the request id)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_read_pool(), call)
