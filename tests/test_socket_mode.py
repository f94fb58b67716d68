from __future__ import annotations

from pathlib import Path

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

from bot.slack_app import SLACK_APP
from handlers import ids
from tests.doubles import signing
from tests.doubles.socket_mode import SocketModeDouble
from tests.harness import eventually, harness


async def test_socket_mode_delivers_clicks_and_commands_to_the_same_listeners(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path) as h, SocketModeDouble() as sock:
        h.slack.socket_mode_url = sock.url
        slack_app = h.client.app[SLACK_APP]
        handler = AsyncSocketModeHandler(slack_app, app_token="xapp-test")
        await handler.connect_async()  # type: ignore[no-untyped-call]  # slack_bolt leaves it unannotated
        try:
            await sock.wait_connected()
            created = await h.submit()
            payload = await h.click_payload("U0ALICE", ids.APPROVE, created["id"])
            ack = await sock.send_envelope("interactive", payload)
            assert ack["envelope_id"]
            await h.status(created["id"], "executed")

            command = signing.slash_command_fields(
                user_id="U0ALICE", text="help", response_url=h.slack.response_url(kind="commands")
            )
            await sock.send_envelope("slash_commands", command, accepts_response_payload=True)
            await eventually(lambda: any("/agent pause" in t for t in h.ephemeral_texts()))
        finally:
            await handler.close_async()  # type: ignore[no-untyped-call]  # slack_bolt leaves it unannotated
