from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.client.conftest import approve, reject
from tests.harness import Harness

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"submit_draft", "get_draft", "wait_for_decision", "cancel_draft", "agent_status", "report_done"}


def mcp_command() -> list[str]:
    from bot import cli

    # `countersign mcp` once the CLI has the command; the module's own entry point until then.
    return ["-m", "bot", "mcp"] if hasattr(cli, "mcp") else ["-m", "bot.mcp_server"]


@asynccontextmanager
async def mcp_session(token: str, url: str, tmp_path: Path) -> AsyncIterator[Client]:
    """`python -m bot.mcp_server` as an MCP client would start it: a child process on stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=[*mcp_command(), "--url", url],
        env={"COUNTERSIGN_AGENT_TOKEN": token},
        cwd=str(ROOT),
    )
    with (tmp_path / "mcp.stderr").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
            yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def test_mcp_agent_submits_and_gets_the_decision_of_a_slack_click(
    h: Harness, url: str, tmp_path: Path
) -> None:
    async with mcp_session(h.token, url, tmp_path) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) >= TOOLS
        submit_schema = listed["submit_draft"].input_schema
        assert set(submit_schema["required"]) == {"category", "summary", "body"}
        assert "decimal string" in submit_schema["properties"]["amount"]["description"]
        assert "approved_body" in (listed["wait_for_decision"].description or "")

        submitted = await call(
            client,
            "submit_draft",
            category="reply",
            summary="Reply to ticket 77",
            body="Hi Lee, your replacement ships Monday.",
            context="My blender broke after a week.",
            idempotency_key="ticket-77",
        )
        assert submitted["status"] == "pending" and "wait_for_decision" in submitted["next_step"]

        waiting = asyncio.ensure_future(
            call(client, "wait_for_decision", draft_id=submitted["id"], timeout_seconds=20)
        )
        await approve(h, submitted["id"])
        decided = await waiting
        assert decided["status"] == "approved" and decided["final_body"].startswith("Hi Lee")
        assert decided["decisions"][0]["by"] == "U0ALICE"
        assert "report_done" in decided["next_step"]

        done = await call(client, "report_done", draft_id=submitted["id"], ok=True, detail="sent by email")
        assert done["status"] == "executed"

        status = await call(client, "agent_status")
        assert status["state"] == "active" and status["categories"]["reply"]["count_used"] == 1


async def test_mcp_rejection_reason_and_errors_reach_the_model(h: Harness, url: str, tmp_path: Path) -> None:
    async with mcp_session(h.token, url, tmp_path) as client:
        first = await call(client, "submit_draft", category="reply", summary="Reply", body="We guarantee it.")
        waiting = asyncio.ensure_future(call(client, "wait_for_decision", draft_id=first["id"]))
        await reject(h, first["id"], "No guarantees, ever")
        rejected = await waiting
        assert rejected["status"] == "rejected" and "No guarantees, ever" in rejected["next_step"]

        second = await call(client, "submit_draft", category="reply", summary="Reply", body="Thanks!")
        pending = await call(client, "wait_for_decision", draft_id=second["id"], timeout_seconds=0)
        assert pending["status"] == "pending"
        cancelled = await call(client, "cancel_draft", draft_id=second["id"])
        assert cancelled["status"] == "cancelled" and "Do not act" in cancelled["next_step"]

        refused = await client.call_tool(
            "submit_draft", {"category": "goodwill", "summary": "x", "body": "y"}
        )
        assert refused.is_error and "403 forbidden" in refused.content[0].text  # type: ignore[union-attr]
        missing = await client.call_tool("get_draft", {"draft_id": "d_missing"})
        assert missing.is_error and "not_found" in missing.content[0].text  # type: ignore[union-attr]


async def test_mcp_paused_agent_is_told_a_human_took_over(h: Harness, url: str, tmp_path: Path) -> None:
    async with mcp_session(h.token, url, tmp_path) as client:
        approved = await call(client, "submit_draft", category="reply", summary="Reply", body="Hi")
        await approve(h, approved["id"])
        await h.status(approved["id"], "approved")
        await h.command("U0ALICE", "pause support-bot")

        held = await call(client, "get_draft", draft_id=approved["id"])
        assert held["status"] == "approved" and "do NOT carry it out" in held["next_step"]
        submitted = await call(client, "submit_draft", category="reply", summary="Reply", body="Hello")
        assert submitted["status"] == "manual" and submitted["reason"] == "agent_paused"
        assert "Do nothing" in submitted["next_step"]
