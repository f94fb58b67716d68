from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from countersign_client import Client

from tests.client.conftest import Drafts, approve, edit, in_thread, load_example, reject
from tests.harness import Harness
from tests.processes import free_port

agent = load_example("examples/support_agent.py")


async def test_support_agent_sends_only_what_was_approved(h: Harness, url: str, drafts: Drafts) -> None:
    mailbox = agent.Mailbox()
    lines: list[str] = []
    with Client(h.token, url) as client:
        running = await in_thread(
            agent.run,
            client,
            agent.TICKETS,
            agent.CannedDrafter(),
            mailbox=mailbox,
            timeout=20,
            say=lines.append,
        )
        await approve(h, await drafts.next())  # T-1001 as drafted
        await edit(h, await drafts.next(), "Hi Sam, sorry! Tracking: ACME123.")  # T-1002 edited
        await reject(h, await drafts.next(), "Never promise delivery dates")  # T-1003, first draft
        await approve(h, await drafts.next())  # T-1003, redrafted with the feedback
        outcomes = await running
    assert [(o.ticket, o.result, o.attempts) for o in outcomes] == [
        ("T-1001", "sent", 1),
        ("T-1002", "edited-and-sent", 1),
        ("T-1003", "sent", 2),
    ]
    assert mailbox.sent[1] == ("T-1002", "Hi Sam, sorry! Tracking: ACME123.")
    assert "guarantee" not in mailbox.sent[2][1]
    assert any("Never promise delivery dates" in line for line in lines)


async def test_support_agent_does_nothing_while_paused(
    h: Harness, url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await h.command("U0ALICE", "pause support-bot")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    code = await asyncio.to_thread(agent.main, ["--url", url, "--token", h.token])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("a human took over (agent_paused)") == 3 and "0 replies sent" in out


async def test_support_agent_stops_when_countersign_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    code = await asyncio.to_thread(agent.main, ["--url", dead, "--token", "t", "--max-retries", "1"])
    assert code == 1


@pytest.fixture
async def messages_api() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for the Anthropic Messages API that answers with a fixed reply."""
    seen: list[dict[str, Any]] = []

    async def create(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": seen[-1]["model"],
                "content": [{"type": "text", "text": "  Hi Dana, a replacement is on its way.  "}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 9},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/messages", create)
    async with TestServer(app) as server:
        yield str(server.make_url("")).rstrip("/"), seen


async def test_claude_drafter_uses_the_sdk_and_passes_feedback(
    messages_api: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url, seen = messages_api
    monkeypatch.setenv("ANTHROPIC_BASE_URL", base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    drafter = agent.ClaudeDrafter("claude-test")
    try:
        text = await asyncio.to_thread(drafter.draft, agent.TICKETS[0], "Say when it ships")
    finally:
        drafter.close()
    assert text == "Hi Dana, a replacement is on its way."
    assert seen[0]["model"] == "claude-test" and "no promises" in seen[0]["system"]
    assert "Say when it ships" in seen[0]["messages"][0]["content"]
