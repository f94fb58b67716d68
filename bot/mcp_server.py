"""`countersign mcp`: an MCP server over stdio that lets an MCP-capable agent ask for approval.

It is an agent-side adapter: it holds one agent token and talks to a running Countersign over
the agent HTTP API (countersign_client), so it needs no database and no Slack credentials.
Every answer carries `next_step`, which tells the model in plain words what it may do now.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from countersign_client import AsyncClient, CountersignError, Draft, Submission, held_by
from countersign_client.client import DEFAULT_URL, MAX_WAIT
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

MAX_WAIT_TOOL = 3600.0

INSTRUCTIONS = """\
Countersign is the human approval gate for your actions. You must not carry out a gated action
(a customer reply, a refund, an account change) yourself until a human approved it:
1. submit_draft with exactly what you intend to do; 2. wait_for_decision (call it again while the
status is still pending); 3. follow `next_step` in the answer. When the draft is approved, act with
`approved_body` (a reviewer may have edited it), never your original text, then call report_done.
When it is rejected, read the reviewer's reason: it is feedback for your next attempt. When the status
is manual, a human took over: do nothing. Never resubmit the same action to get around a decision."""


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def next_step(draft: Draft, held: str | None = None) -> str:
    """What the model may do now, for each state a draft can be in (`held`: why an approved action
    must still wait, e.g. the agent was paused after the approval)."""
    status = draft.status
    if held and status == "approved" and draft.execution.status == "none":
        return (
            f"Approved, but since then {held.replace('_', ' ')}: do NOT carry it out now. "
            "A human decides what happens next; check again later with get_draft."
        )
    if status == "pending":
        return "Waiting for a human decision. Call wait_for_decision again; do not act yet."
    if status == "approved" and draft.execution.status == "none":
        edited = " A reviewer edited it: use approved_body, not your draft." if draft.edited else ""
        return (
            "Approved. Carry out the action now, exactly as approved_body says"
            f"{' and with the approved amount' if draft.amount is not None else ''}.{edited} "
            "Then call report_done with ok=true (or ok=false and what went wrong)."
        )
    if status == "approved":
        return "Approved. Countersign's executor carries the action out itself: do nothing."
    if status == "rejected":
        reason = draft.rejection.reason if draft.rejection else None
        return (
            f"Rejected by a reviewer: {reason or 'no reason given'}. Do not carry it out. "
            "Treat the reason as feedback; only submit a new, revised draft if it still makes sense."
        )
    if status in ("manual", "handled"):
        return (
            f"A human took over ({draft.reason or 'manual'}). Do nothing about this action; "
            "you may tell the user that a person will handle it."
        )
    if status == "expired":
        return "Nobody decided in time and the draft expired. Do not act; submit again only if still needed."
    if status == "cancelled":
        return "The draft was withdrawn. Do not act."
    if status == "executed":
        return "Done: the action was carried out. Nothing more to do."
    if status == "failed":
        return f"Carrying it out failed ({draft.execution.last_error}). Do not retry on your own; a human decides."
    return "The outcome is unknown and a human must check it. Do not retry."


def draft_answer(draft: Draft, held: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = _plain(dataclasses.asdict(draft))
    answer["final_body"] = draft.final_body
    answer["next_step"] = next_step(draft, held)
    return answer


async def checked_answer(client: AsyncClient, draft: Draft) -> dict[str, Any]:
    """The answer for a draft, re-checking the brake before telling the model to act on an approval."""
    held = None
    if draft.status == "approved" and draft.execution.status == "none":
        held = held_by(await client.me(), draft)
    return draft_answer(draft, held)


def submission_answer(submission: Submission) -> dict[str, Any]:
    answer: dict[str, Any] = _plain(dataclasses.asdict(submission))
    if submission.status == "manual":
        answer["next_step"] = (
            f"A human took over ({submission.reason}). Do nothing about this action; "
            "you may tell the user that a person will handle it."
        )
    else:
        answer["next_step"] = "Submitted for review. Call wait_for_decision with this id; do not act yet."
    return answer


def _tool_error(error: CountersignError) -> ToolError:
    return ToolError(f"Countersign refused or could not be reached, so nothing may be done: {error}")


def build_server(client: AsyncClient) -> MCPServer[Any]:
    """The MCP server with its tools, talking to Countersign through `client`."""
    server: MCPServer[Any] = MCPServer(name="countersign", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True)
    )
    async def submit_draft(
        category: Annotated[
            str, Field(description="Kind of action, as configured in Countersign, e.g. 'reply' or 'refund'.")
        ],
        summary: Annotated[
            str, Field(description="One line for the reviewer: what and for whom, e.g. 'Refund order 1042'.")
        ],
        body: Annotated[
            str, Field(description="The exact text you want to send or the exact action you want to take.")
        ],
        context: Annotated[
            str | None,
            Field(description="What the customer actually said, so the reviewer can judge the draft."),
        ] = None,
        amount: Annotated[
            str | None, Field(description="Money involved, as a decimal string like '30.00' (never a float).")
        ] = None,
        currency: Annotated[
            str | None, Field(description="ISO 4217 code; defaults to the category's.")
        ] = None,
        payload: Annotated[
            dict[str, Any] | None,
            Field(description="Structured data for the executor, e.g. {'order_id': '1042'}."),
        ] = None,
        requested_by: Annotated[
            str | None, Field(description="Slack user id of the person you act for; they cannot approve it.")
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Field(
                description="A key unique to this action (e.g. 'refund-order-1042'). Submitting again with the same "
                "key and content returns the same draft instead of creating a second one."
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Ask a human to approve an action before you take it. Returns the draft id and status:
        'pending' (call wait_for_decision next) or 'manual' (a human took over: do nothing).
        Never carry out the action before it is approved."""
        try:
            submitted = await client.submit(
                category=category,
                summary=summary,
                body=body,
                context=context,
                amount=amount,
                currency=currency,
                payload=payload,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
            )
        except CountersignError as error:
            raise _tool_error(error) from None
        return submission_answer(submitted)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def get_draft(
        draft_id: Annotated[str, Field(description="The id submit_draft returned.")],
    ) -> dict[str, Any]:
        """Read a draft now, without waiting: status, reviewer decisions (with reasons), the approved
        text (approved_body, possibly edited by a reviewer), risk findings and execution state."""
        try:
            return await checked_answer(client, await client.get(draft_id))
        except CountersignError as error:
            raise _tool_error(error) from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def wait_for_decision(
        ctx: Context,
        draft_id: Annotated[str, Field(description="The id submit_draft returned.")],
        timeout_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT_TOOL, description="How long to wait for a human, in seconds.")
        ] = 120.0,
    ) -> dict[str, Any]:
        """Wait until a human decides on a draft (or the timeout passes) and return it with next_step.
        approved: act with approved_body, then report_done. rejected: do not act; the reviewer's reason is
        in decisions. manual: a human took over, do nothing. Still pending: call this again."""
        deadline = time.monotonic() + timeout_seconds
        try:
            while True:
                chunk = min(MAX_WAIT, max(0.0, deadline - time.monotonic()))
                draft = await client.wait(draft_id, chunk)
                remaining = deadline - time.monotonic()
                if draft.decided or remaining <= 0:
                    return await checked_answer(client, draft)
                await ctx.report_progress(timeout_seconds - remaining, timeout_seconds, "waiting for a human")
        except CountersignError as error:
            raise _tool_error(error) from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
    async def cancel_draft(
        draft_id: Annotated[str, Field(description="The id of a pending draft you no longer want.")],
    ) -> dict[str, Any]:
        """Withdraw a draft that is still pending, e.g. because the customer's problem solved itself.
        A draft that a human already decided cannot be withdrawn."""
        try:
            return draft_answer(await client.cancel(draft_id))
        except CountersignError as error:
            raise _tool_error(error) from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
    async def report_done(
        draft_id: Annotated[str, Field(description="The id of the approved draft you carried out.")],
        ok: Annotated[bool, Field(description="true when the action succeeded, false when it failed.")],
        detail: Annotated[str | None, Field(description="What happened, especially when it failed.")] = None,
    ) -> dict[str, Any]:
        """After carrying out an approved action yourself, report the outcome so the team's audit
        trail and Slack show it. Only for approved drafts whose next_step told you to act."""
        try:
            return draft_answer(await client.done(draft_id, ok, detail))
        except CountersignError as error:
            raise _tool_error(error) from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def agent_status() -> dict[str, Any]:
        """Your state ('active', 'paused' by a human, or 'offline') and, per category you may use,
        today's mode ('review' or 'manual') and cap usage. While paused, do not submit new work
        expecting approval: it goes to humans."""
        try:
            me = await client.me()
        except CountersignError as error:
            raise _tool_error(error) from None
        answer: dict[str, Any] = _plain(dataclasses.asdict(me))
        return answer

    return server


async def serve(token: str, url: str) -> None:
    """Serve MCP over stdin/stdout until the client closes the stream."""
    async with AsyncClient(token, url) as client:
        await build_server(client).run_stdio_async()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot.mcp_server", description="Countersign's MCP server (stdio) for one agent."
    )
    parser.add_argument(
        "--agent-token",
        default=os.environ.get("COUNTERSIGN_AGENT_TOKEN"),
        help="The agent's token (or COUNTERSIGN_AGENT_TOKEN).",
    )
    parser.add_argument(
        "--url", default=os.environ.get("COUNTERSIGN_URL", DEFAULT_URL), help="Countersign's base URL."
    )
    args = parser.parse_args(argv)
    if not args.agent_token:
        parser.error("an agent token is required: --agent-token or COUNTERSIGN_AGENT_TOKEN")
    return args


def main(argv: list[str] | None = None) -> None:
    import anyio

    args = parse_args(argv)
    try:
        anyio.run(serve, args.agent_token, args.url)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
