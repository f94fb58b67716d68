from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers import ids
from tests.conftest import SIGNING_SECRET
from tests.doubles import signing
from tests.harness import Harness, eventually, harness

ROOT = Path(__file__).resolve().parents[1]
# Web API method (as slack_sdk names it) → the bot scope it needs.
SCOPES = {
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "users_info": "users:read",
    "usergroups_users_list": "usergroups:read",
    "files_upload_v2": "files:write",
    "views_open": None,
    "views_publish": None,
    "conversations_history": "channels:history",
    "conversations_replies": "channels:history",
}
# Scopes with no method of their own: posting into channels the bot has not joined, and receiving /agent.
IMPLICIT = {"chat:write.public", "commands", "groups:history"}


def manifest() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())  # type: ignore[no-any-return]


def methods_used() -> set[str]:
    found: set[str] = set()
    for path in [*ROOT.glob("bot/*.py"), *ROOT.glob("handlers/*.py")]:
        found |= set(
            re.findall(
                r"client\.((?:chat|views|users|usergroups|files|conversations)_\w+)\(", path.read_text()
            )
        )
    return found


def test_manifest_fits_slacks_schema_limits() -> None:
    data = manifest()
    assert 1 <= len(data["display_information"]["name"]) <= 35
    assert len(data["display_information"]["description"]) <= 140
    for command in data["features"]["slash_commands"]:
        assert re.match(r"^/.{1,31}$", command["command"]) and len(command["description"]) <= 2000
    assert data["settings"]["interactivity"]["is_enabled"] is True
    assert data["features"]["app_home"]["home_tab_enabled"] is True


def test_manifest_declares_exactly_the_commands_and_events_the_code_registers() -> None:
    data = manifest()
    assert {c["command"] for c in data["features"]["slash_commands"]} == {ids.COMMAND}
    assert set(data["settings"]["event_subscriptions"]["bot_events"]) == set(ids.EVENTS)


def test_manifest_declares_exactly_the_scopes_the_code_uses() -> None:
    used = methods_used()
    unknown = used - SCOPES.keys()
    assert not unknown, f"add these methods to SCOPES: {unknown}"
    needed = {SCOPES[m] for m in used if SCOPES[m]} | IMPLICIT
    assert set(manifest()["oauth_config"]["scopes"]["bot"]) == needed


@pytest.fixture
async def h(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(db_url, tmp_path) as value:
        yield value


async def test_every_declared_command_and_event_has_a_listener(h: Harness) -> None:
    for command in manifest()["features"]["slash_commands"]:
        status, _ = await h.post_signed(
            signing.slash_command(
                SIGNING_SECRET,
                user_id="U0ALICE",
                text="help",
                command=command["command"],
                response_url=h.slack.response_url(kind="commands"),
            )
        )
        assert status == 200
    await eventually(lambda: any("/agent" in t for t in h.ephemeral_texts()))
    for event in manifest()["settings"]["event_subscriptions"]["bot_events"]:
        assert event == "app_home_opened"
        status, _ = await h.post_signed(
            signing.event_callback(SIGNING_SECRET, signing.app_home_opened_event("U0ALICE"))
        )
        assert status == 200
    await eventually(lambda: h.slack.calls("views.publish"))
