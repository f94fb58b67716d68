from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from bot.mcp_server import parse_args
from bot.webhooks import signed_headers
from tests.client.conftest import Drafts, approve, edit, in_thread, reject
from tests.conftest import EXECUTOR_SECRET
from tests.harness import Harness

README = Path(__file__).resolve().parents[2] / "client" / "README.md"
TESTED = re.compile(r"<!-- tested: (?P<mode>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)
SNIPPETS = [(m["mode"], m["lang"], m["code"]) for m in TESTED.finditer(README.read_text())]
EDITED = "Hi Kim, your invoice for March is attached."


def ids(snippet: tuple[str, str, str]) -> str:
    return f"{snippet[0]}-{SNIPPETS.index(snippet)}"


def test_every_python_snippet_is_tested() -> None:
    text = README.read_text()
    assert text.count("```python") == sum(1 for _, lang, _ in SNIPPETS if lang == "python") >= 5


def run_snippet(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    return namespace


@pytest.fixture
def env(h: Harness, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTERSIGN_AGENT_TOKEN", h.token)
    monkeypatch.setenv("COUNTERSIGN_URL", url)
    monkeypatch.setenv("REFUND_EXECUTOR_SECRET", EXECUTOR_SECRET)


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s[0] in ("approve", "edit", "reject")], ids=ids)
async def test_review_snippet_runs_against_the_server(
    snippet: tuple[str, str, str],
    env: None,
    h: Harness,
    drafts: Drafts,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mode, _, code = snippet
    running = await in_thread(run_snippet, code)
    draft_id = await drafts.next()
    if mode == "approve":
        await approve(h, draft_id)
    elif mode == "edit":
        await edit(h, draft_id, EDITED)
    else:
        await reject(h, draft_id, "No delivery promises")
    await asyncio.wait_for(running, 30)
    out = capsys.readouterr().out
    checks = {
        "approve": ("sending: Hi Sam", "approved by ('U0ALICE',)"),
        "edit": (f"emailing ticket 883: {EDITED}",),
        "reject": ("feedback for the model: No delivery promises",),
    }
    assert any(check in out for check in checks[mode]), out


async def test_webhook_snippet_verifies_and_deduplicates(env: None) -> None:
    (code,) = [code for mode, _, code in SNIPPETS if mode == "webhook"]
    handle = run_snippet(code)["handle"]
    body = json.dumps({"draft_id": "d_9", "amount": "12.00"}).encode()
    headers = signed_headers(EXECUTOR_SECRET, "d_9", int(time.time()), body)
    assert handle(body, headers) == (200, {"ok": True, "refunded": "12.00"})
    assert handle(body, headers) == (200, {"ok": True, "refunded": "12.00"})
    assert handle(body.replace(b"12.00", b"99.00"), headers)[0] == 401


def test_mcp_config_snippet_starts_the_documented_command(monkeypatch: pytest.MonkeyPatch) -> None:
    (code,) = [code for mode, _, code in SNIPPETS if mode == "mcp-config"]
    server = json.loads(code)["mcpServers"]["countersign"]
    assert server["command"] == "countersign" and server["args"][0] == "mcp"
    monkeypatch.setenv("COUNTERSIGN_AGENT_TOKEN", server["env"]["COUNTERSIGN_AGENT_TOKEN"])
    args = parse_args(server["args"][1:])
    assert args.url == "http://127.0.0.1:3000" and args.agent_token.startswith("paste")
