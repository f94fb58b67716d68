"""Running the server process: HTTP mode (aiohttp) or Socket Mode, until interrupted."""

from __future__ import annotations

from aiohttp import web

from bot.app import create_app
from bot.settings import Settings


def run(settings: Settings, *, host: str, port: int, socket_mode: bool) -> None:
    """Serve until SIGINT/SIGTERM."""
    app = create_app(settings)
    web.run_app(app, host=host, port=port, print=None)
