"""Events API listeners: App Home."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp, AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from handlers import blocks
from handlers.context import errors_after_ack_logged, services


async def app_home_opened(event: dict[str, Any], context: AsyncBoltContext, client: AsyncWebClient) -> None:
    if event.get("tab") != "home":
        return
    home = await services(context).control.home(user=event["user"])
    await client.views_publish(user_id=event["user"], view=blocks.home_view(home))


def register(app: AsyncApp) -> None:
    app.event("app_home_opened")(errors_after_ack_logged(app_home_opened))
