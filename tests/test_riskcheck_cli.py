from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_env, write_config
from tests.doubles.anthropic_api import DEFAULT_API_KEY, AnthropicDouble, Status, findings
from tests.test_cli import run

GOOD = {"category": "reply", "body": "Your order ships Monday.", "context": "When does it ship?"}
RISKY = {"category": "refund", "body": "We guarantee it.", "context": "Refund please", "amount": "30.00"}
WRONG_TYPES: list[Any] = [5, 1.5, ["USD"], {"code": "USD"}, None, True, False]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(f"sqlite:///{tmp_path / 'countersign.db'}", write_config(tmp_path))


def check(env: dict[str, str], path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(env, "risk", "check", str(path), *args)


def results(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    # Only "\n" ends an output line: json.dumps escapes none of U+2028 and friends.
    return [json.loads(line) for line in done.stdout.split("\n")[:-1]]


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return path


def test_risk_check_reports_a_bad_line_and_still_checks_the_others(
    env: dict[str, str], tmp_path: Path
) -> None:
    lines = [
        json.dumps(RISKY),
        json.dumps({"category": "refund", "body": "x", "amount": "1", "currency": ["USD"]}),
        "[" * 100_000,
        json.dumps(GOOD),
    ]
    done = check(env, write_lines(tmp_path / "tickets.jsonl", lines))
    out = results(done)
    assert [o["line"] for o in out] == [1, 2, 3, 4]
    assert out[0]["level"] == "high" and "forbidden_phrase" in {f["code"] for f in out[0]["findings"]}
    assert out[1] == {"line": 2, "level": "none", "findings": [], "error": "currency must be a string"}
    assert out[2] == {"line": 3, "level": "none", "findings": [], "error": "JSON nested too deeply"}
    assert out[3] == {"line": 4, "level": "none", "findings": []}
    assert "Traceback" not in done.stderr
    assert "4 drafts: high 1, none 1, error 2" in done.stderr


@pytest.mark.parametrize(
    ("field", "optional"),
    [("category", False), ("body", False), ("context", True), ("amount", True), ("currency", True)],
)
def test_risk_check_reports_an_error_on_the_line_when_a_field_has_the_wrong_json_type(
    env: dict[str, str], tmp_path: Path, field: str, optional: bool
) -> None:
    base = {"category": "refund", "body": "Refunded.", "context": "Refund please", "amount": "30.00"}
    lines = [json.dumps(base | {field: value}) for value in WRONG_TYPES] + [json.dumps(GOOD)]
    out = results(check(env, write_lines(tmp_path / "tickets.jsonl", lines)))
    assert [o["line"] for o in out] == list(range(1, len(WRONG_TYPES) + 2))
    for value, result in zip(WRONG_TYPES, out, strict=False):
        if value is None and optional:
            assert "error" not in result, result  # null is "absent", as on the agent API
        elif field == "amount" and isinstance(value, int | float) and not isinstance(value, bool):
            # Exported tickets often hold amounts as numbers: judged as their decimal string.
            assert "error" not in result, (value, result)
        else:
            assert result["error"] == f"{field} must be a string", (value, result)
            assert result["level"] == "none" and result["findings"] == []
    assert out[-1] == {"line": len(WRONG_TYPES) + 1, "level": "none", "findings": []}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_risk_check_splits_only_on_newlines_when_a_body_holds_other_unicode_line_breaks(
    env: dict[str, str], tmp_path: Path, newline: str
) -> None:
    lines = [
        json.dumps(GOOD | {"body": "Your order ships Monday.\u2028Thanks!"}, ensure_ascii=False),
        json.dumps(GOOD | {"body": "Your order\u2029ships\x85Monday."}, ensure_ascii=False),
        json.dumps(RISKY),
    ]
    assert len("\n".join(lines).splitlines()) == 6  # what str.splitlines made of them
    out = results(check(env, write_lines(tmp_path / "tickets.jsonl", lines, newline)))
    assert out[:2] == [
        {"line": 1, "level": "none", "findings": []},
        {"line": 2, "level": "none", "findings": []},
    ]
    assert out[2]["line"] == 3 and out[2]["level"] == "high"
    assert len(out) == 3


def test_risk_check_exits_2_naming_the_file_when_it_is_not_utf8(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"category": "reply", "body": "caf\xe9"}\n')
    done = check(env, path)
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert str(path) in done.stderr and "UTF-8" in done.stderr


def test_risk_check_llm_exits_2_naming_the_missing_key_before_checking_anything(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = check(env, write_lines(tmp_path / "tickets.jsonl", [json.dumps(GOOD)]), "--llm")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "ANTHROPIC_API_KEY is not set" in done.stderr and "console.anthropic.com" in done.stderr
    assert "drafts:" not in done.stderr


@pytest.fixture
async def claude() -> AsyncIterator[AnthropicDouble]:
    async with AnthropicDouble() as double:
        yield double


async def test_risk_check_llm_says_per_line_whether_claude_reviewed_it_or_was_unavailable(
    env: dict[str, str], tmp_path: Path, claude: AnthropicDouble
) -> None:
    claude.script(
        findings(("invented_promise", "medium", "Promises a date the policy forbids.")),
        Status(529, "overloaded_error", "Overloaded"),
    )
    lines = [json.dumps(GOOD), json.dumps(RISKY), "not json"]
    llm_env = env | {"ANTHROPIC_API_KEY": DEFAULT_API_KEY, "ANTHROPIC_BASE_URL": claude.base_url}
    # The double answers on this event loop: the CLI runs in a thread meanwhile.
    done = await asyncio.to_thread(check, llm_env, write_lines(tmp_path / "tickets.jsonl", lines), "--llm")
    out = results(done)
    assert len(claude.requests) == 2
    assert out[0]["llm"] == "reviewed" and "llm_note" not in out[0]
    assert [f["code"] for f in out[0]["findings"]] == ["ai_invented_promise"]
    assert out[0]["level"] == "medium"
    assert out[1]["llm"] == "unavailable" and "overloaded" in out[1]["llm_note"]
    assert out[1]["level"] == "high" and not any(f["code"].startswith("ai_") for f in out[1]["findings"])
    assert "llm" not in out[2] and "error" in out[2]
    assert "AI review unavailable for 1" in done.stderr
