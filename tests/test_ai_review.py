from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers import ids
from tests.conftest import make_env, write_config
from tests.doubles.anthropic_api import DEFAULT_API_KEY, AnthropicDouble, Sleep, Status, findings
from tests.harness import Harness, eventually, harness

AI_ON = '\n[categories.billing]\nchannel = "C0BILLING"\nreviewers = ["U0ALICE", "U0BOB"]\nai_review = true\npolicy = "Never promise delivery dates."\n'


@pytest.fixture
async def claude(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AnthropicDouble]:
    async with AnthropicDouble() as double:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", double.base_url)
        yield double


@pytest.fixture
async def h(db_url: str, tmp_path: Path, claude: AnthropicDouble) -> AsyncIterator[Harness]:
    env = {"ANTHROPIC_API_KEY": DEFAULT_API_KEY}
    async with harness(db_url, tmp_path, extra_config=AI_ON, env=env) as value:
        from bot import agents

        registered = agents.add(value.rt, name="billing-bot", categories=["billing"], callback_prefixes=[])
        value.token = registered.token
        yield value


def card(h: Harness, message: dict[str, object]) -> str:
    current = h.slack.message(str(message["channel"]), str(message["ts"]))
    return json.dumps(current.get("blocks"), ensure_ascii=False)


async def submit(h: Harness) -> dict[str, object]:
    return await h.submit(
        category="billing", amount=None, body="It will arrive tomorrow, promise.", context="Where is it?"
    )


async def test_card_says_pending_then_shows_the_ai_findings(h: Harness, claude: AnthropicDouble) -> None:
    claude.script(findings(("invented_promise", "medium", "Promises a delivery date the policy forbids.")))
    created = await submit(h)
    message = await h.posted(str(created["id"]))
    await eventually(lambda: "AI review done" in card(h, message))
    assert "ai_invented_promise" in card(h, message)
    view = await h.draft(str(created["id"]))
    assert any(f["code"] == "ai_invented_promise" for f in view["risk"]["findings"])
    assert "Never promise delivery dates." in claude.requests[0].system_text + claude.requests[0].user_text


async def test_a_review_that_ends_after_the_draft_was_withdrawn_changes_nothing(
    h: Harness, claude: AnthropicDouble
) -> None:
    claude.script(Sleep(1.0, findings(("invented_promise", "medium", "Promises a delivery date."))))
    created = await submit(h)
    message = await h.posted(str(created["id"]))
    await eventually(lambda: claude.requests)  # the reviewer is reading it
    response = await h.client.delete(f"/v1/drafts/{created['id']}", headers=h.auth())
    assert response.status == 200, await response.text()
    withdrawn = await h.draft(str(created["id"]))
    await eventually(lambda: h.jobs("risk.ai_review") == [("done", 1)])  # answered and handled
    after = await h.draft(str(created["id"]))
    assert after["updated_at"] == withdrawn["updated_at"] and after["risk"] == withdrawn["risk"]
    assert "AI review not done: the draft left review first" in card(h, message)


async def test_an_overloaded_reviewer_degrades_to_rules_only_and_says_so(
    h: Harness, claude: AnthropicDouble
) -> None:
    claude.script(Status(529, "overloaded_error", "Overloaded"))
    created = await submit(h)
    message = await h.posted(str(created["id"]))
    await eventually(lambda: "AI review unavailable" in card(h, message))
    await h.click("U0ALICE", ids.APPROVE, str(created["id"]))
    await h.status(str(created["id"]), "approved")


async def test_a_high_ai_finding_requires_two_approvers(h: Harness, claude: AnthropicDouble) -> None:
    claude.script(findings(("other_customer", "high", "Mentions another customer's order.")))
    created = await submit(h)
    message = await h.posted(str(created["id"]))
    await eventually(lambda: "ai_other_customer" in card(h, message))
    await h.click("U0ALICE", ids.APPROVE, str(created["id"]))
    await eventually(lambda: any("First approval recorded" in t for t in h.ephemeral_texts()))
    await h.click("U0BOB", ids.APPROVE, str(created["id"]))
    await h.status(str(created["id"]), "approved")


def test_risk_check_cli_prints_one_line_per_input_and_a_summary(tmp_path: Path) -> None:
    lines = [
        {
            "category": "refund",
            "body": "We guarantee a refund of $50.00",
            "context": "where is my parcel",
            "amount": "30.00",
        },
        {"category": "reply", "body": "Your order ships Monday.", "context": "When does it ship?"},
        "not json",
        {"category": "unknown", "body": "x"},
    ]
    source = tmp_path / "tickets.jsonl"
    source.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    env = make_env(f"sqlite:///{tmp_path / 'x.db'}", write_config(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "bot", "risk", "check", str(source)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["line"] for o in out] == [1, 2, 3, 4]
    assert out[0]["level"] == "high"
    assert {f["code"] for f in out[0]["findings"]} >= {
        "money_unrequested",
        "amount_mismatch",
        "forbidden_phrase",
    }
    assert out[1] == {"line": 2, "level": "none", "findings": []}
    assert "error" in out[2] and "unknown category" in out[3]["error"]
    assert "4 drafts: high 1, none 1, error 2" in done.stderr


def reviewer_available(text: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith("countersign_ai_reviewer_available "))
    return float(line.split()[1])


async def test_metrics_show_whether_the_reviewer_is_available(h: Harness, claude: AnthropicDouble) -> None:
    assert reviewer_available(await (await h.client.get("/metrics")).text()) == 1.0
    claude.script(Status(529, "overloaded_error", "Overloaded"))
    message = await h.posted(str((await submit(h))["id"]))
    await eventually(lambda: "AI review unavailable" in card(h, message))
    text = await (await h.client.get("/metrics")).text()
    assert reviewer_available(text) == 0.0
    assert 'countersign_ai_reviews_total{outcome="unavailable"} 1.0' in text
    claude.script(findings())
    message = await h.posted(str((await submit(h))["id"]))
    await eventually(lambda: "AI review done" in card(h, message))
    assert reviewer_available(await (await h.client.get("/metrics")).text()) == 1.0


async def test_metrics_show_the_reviewer_unavailable_without_a_key(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path, extra_config=AI_ON) as h:
        assert reviewer_available(await (await h.client.get("/metrics")).text()) == 0.0
