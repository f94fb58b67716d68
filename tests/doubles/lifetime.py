"""How a double running in a process of its own knows to stop: SIGTERM, SIGINT, or its stdin
closing (the test process that started it went away without stopping it)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys


def stop_requested(*, watch_stdin: bool = True) -> asyncio.Event:
    """An event set when the process is asked to stop; call it in the running loop before
    announcing READY, so no request to stop is missed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    return stop
