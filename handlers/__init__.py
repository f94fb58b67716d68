"""Inbound Slack edges. register(app, services) wires every listener; no decorators on a global app."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext

if TYPE_CHECKING:
    from handlers.context import Services

log = logging.getLogger(__name__)


def register(app: AsyncApp, services: Services) -> None:
    """Attach the listeners of every Slack surface, with the services they call."""
    # Imported here: bot/ renders with handlers.blocks, and the listeners import bot/ back.
    from handlers import actions, commands, events, views
    from handlers.context import KEY

    async def inject(context: AsyncBoltContext, next: Callable[[], Awaitable[None]]) -> None:
        context[KEY] = services
        await next()

    async def on_error(error: Exception, body: dict[str, Any], logger: logging.Logger) -> None:
        logger.error("slack listener failed: %r (type=%s)", error, body.get("type"), exc_info=error)

    app.use(inject)
    app.error(on_error)
    actions.register(app)
    views.register(app)
    commands.register(app)
    events.register(app)
