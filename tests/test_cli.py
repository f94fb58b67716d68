from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot import agents, audit
from bot.errors import Unauthorized
from bot.runtime import Runtime
from bot.settings import load_settings
from storage import migrate
from storage.db import create_db_engine
from tests.conftest import make_env, write_config

ROOT = Path(__file__).resolve().parents[1]

BROKEN_CONFIG = """\
timezone = "Mars/Olympus"
admins = ["alice"]
colour = "blue"
[categories.refund]
channel = "C0REFUNDS"
reviewers = ["U0ALICE", "bob"]
daily_amount_cap = "lots"
expire_after = "4 hours"
executor = { url = "http://billing.internal/refunds", secret_env = "CS_TEST_UNSET_SECRET" }
"""
BROKEN_KEYS = [
    "colour",
    "timezone",
    "admins",
    "categories.refund.reviewers",
    "categories.refund.daily_amount_cap",
    "categories.refund.expire_after",
    "categories.refund.executor.secret_env",
]


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SLACK_", "COUNTERSIGN_", "ANTHROPIC_", "REFUND_", "CS_TEST_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=inherited | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return make_env(db_url, write_config(tmp_path))


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return make_env(f"sqlite:///{tmp_path / 'countersign.db'}", write_config(tmp_path))


@pytest.fixture
def runtime(env: dict[str, str]) -> Iterator[Runtime]:
    settings = load_settings(env)
    engine = create_db_engine(settings.database_url)
    migrate.upgrade(engine)
    yield Runtime(engine=engine, config=settings.config)
    engine.dispose()


def printed(output: str, label: str) -> str:
    values = [line.split(": ", 1)[1] for line in output.splitlines() if line.startswith(f"{label}: ")]
    assert len(values) == 1, output
    return values[0]


def register(runtime: Runtime, name: str = "support-bot", categories: str = "refund,reply") -> str:
    return agents.add(runtime, name=name, categories=categories.split(","), callback_prefixes=[]).token


def test_help_lists_every_command_when_run_as_python_m_bot(sqlite_env: dict[str, str]) -> None:
    done = run(sqlite_env, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("serve", "agents", "check-config", "db", "audit"):
        assert command in done.stdout


def test_agents_add_prints_a_token_and_callback_secret_once_that_work(
    env: dict[str, str], runtime: Runtime
) -> None:
    done = run(
        env,
        "agents",
        "add",
        "support-bot",
        "--categories",
        "refund,reply",
        "--callback-prefix",
        "http://127.0.0.1:8080/",
    )
    assert done.returncode == 0, done.stderr
    token, secret = printed(done.stdout, "token"), printed(done.stdout, "callback_secret")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) >= 24
    agent = agents.authenticate(runtime, token)
    assert agent.name == "support-bot" and agent.categories == "refund,reply"
    assert json.loads(agent.callback_prefixes) == ["http://127.0.0.1:8080/"]
    assert agent.callback_secret == secret
    with runtime.engine.connect() as conn:
        stored = [row[0] for row in conn.execute(sa.text("SELECT token_hash FROM agent_token"))]
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]
    listed = run(env, "agents", "list")
    assert listed.returncode == 0, listed.stderr
    assert token not in listed.stdout + listed.stderr and secret not in listed.stdout + listed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["support-bot", "--categories", "refund,wire"], "unknown categories: wire"),
        (["Support Bot", "--categories", "reply"], "lowercase"),
        (["support-bot", "--categories", "reply", "--callback-prefix", "ftp://x/"], "callback prefix"),
        (["taken-bot", "--categories", "reply"], "agent 'taken-bot' already exists"),
        (["all", "--categories", "reply"], "'all' names every agent"),
    ],
)
def test_agents_add_exits_2_and_registers_nothing_when_an_argument_is_invalid(
    sqlite_env: dict[str, str], args: list[str], message: str
) -> None:
    settings = load_settings(sqlite_env)
    engine = create_db_engine(settings.database_url)
    migrate.upgrade(engine)
    try:
        rt = Runtime(engine=engine, config=settings.config)
        register(rt, "taken-bot", "refund")
        done = run(sqlite_env, "agents", "add", *args)
        assert done.returncode == 2
        assert message in done.stderr and "token" not in done.stdout
        assert [(agent.name, agent.categories) for agent in agents.list_all(rt)] == [("taken-bot", "refund")]
    finally:
        engine.dispose()


def test_agents_list_shows_each_agent_with_its_state_and_categories(
    env: dict[str, str], runtime: Runtime
) -> None:
    register(runtime, "triage-bot", "reply")
    register(runtime, "support-bot")
    listed = run(env, "agents", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["support-bot\tactive\trefund,reply", "triage-bot\tactive\treply"]


def test_agents_rotate_revokes_the_old_token_and_prints_a_new_one(
    env: dict[str, str], runtime: Runtime
) -> None:
    old = register(runtime)
    done = run(env, "agents", "rotate", "support-bot")
    assert done.returncode == 0, done.stderr
    new = printed(done.stdout, "token")
    assert new != old
    assert agents.authenticate(runtime, new).name == "support-bot"
    with pytest.raises(Unauthorized):
        agents.authenticate(runtime, old)


def stored_agent(runtime: Runtime) -> tuple[Any, ...]:
    with runtime.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT callback_secret, previous_callback_secret, previous_callback_secret_until"
                " FROM agent WHERE name = 'support-bot'"
            )
        ).one()
    return tuple(row)


def test_agents_rotate_callback_secret_keeps_the_old_one_signing_for_the_overlap_and_the_token(
    env: dict[str, str], runtime: Runtime
) -> None:
    token = register(runtime)
    (old, _, _) = stored_agent(runtime)
    before = datetime.now(UTC)
    done = run(env, "agents", "rotate", "support-bot", "--callback-secret", "--overlap", "2h")
    assert done.returncode == 0, done.stderr
    new = printed(done.stdout, "callback_secret")
    assert new.startswith("whsec_") and new != old and "token" not in done.stdout
    assert "until" in done.stderr and old not in done.stdout + done.stderr
    secret, previous, until = stored_agent(runtime)
    assert (secret, previous) == (new, old)
    until = until if isinstance(until, datetime) else datetime.fromisoformat(until)
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    assert before + timedelta(hours=2) <= until <= datetime.now(UTC) + timedelta(hours=2)
    assert agents.authenticate(runtime, token).name == "support-bot"  # the token is untouched
    lines = list(audit.export(runtime.engine, since=None, fmt="jsonl"))
    assert json.loads(lines[-1])["action"] == "agent.callback_secret_rotated"
    assert new not in "".join(lines) and old not in "".join(lines)

    # No overlap: a leaked secret stops signing at once.
    done = run(env, "agents", "rotate", "support-bot", "--callback-secret", "--overlap", "0")
    assert done.returncode == 0, done.stderr
    assert stored_agent(runtime) == (printed(done.stdout, "callback_secret"), None, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["support-bot", "--callback-secret", "--overlap", "soon"], "--overlap: not a duration"),
        (["support-bot", "--callback-secret", "--overlap", "-1h"], "--overlap: not a duration"),
        (["ghost-bot", "--callback-secret"], "ghost-bot"),
        (["support-bot", "--overlap", "1h"], "--overlap goes with --callback-secret"),
    ],
)
def test_a_refused_callback_secret_rotation_exits_2_and_changes_nothing(
    env: dict[str, str], runtime: Runtime, args: list[str], message: str
) -> None:
    token = register(runtime)
    before = stored_agent(runtime)
    done = run(env, "agents", "rotate", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert stored_agent(runtime) == before
    assert agents.authenticate(runtime, token).name == "support-bot"


def test_agents_remove_revokes_the_token_and_keeps_the_agent_listed_as_removed(
    env: dict[str, str], runtime: Runtime
) -> None:
    token = register(runtime)
    done = run(env, "agents", "remove", "support-bot")
    assert done.returncode == 0, done.stderr
    with pytest.raises(Unauthorized):
        agents.authenticate(runtime, token)
    listed = run(env, "agents", "list")
    assert listed.stdout.splitlines() == ["support-bot\tremoved\t-"]


@pytest.mark.parametrize("command", ["rotate", "remove"])
def test_agents_command_exits_2_naming_the_agent_when_it_is_unknown(
    sqlite_env: dict[str, str], command: str
) -> None:
    done = run(sqlite_env, "agents", command, "ghost-bot")
    assert done.returncode == 2
    assert "no agent named 'ghost-bot'" in done.stderr
    assert done.stdout == ""


def test_check_config_exits_0_when_the_config_is_good(sqlite_env: dict[str, str]) -> None:
    done = run(sqlite_env, "check-config")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{sqlite_env['COUNTERSIGN_CONFIG']}: ok"


def test_check_config_exits_2_listing_every_problem_by_file_and_key_when_the_config_is_broken(
    sqlite_env: dict[str, str],
) -> None:
    path = Path(sqlite_env["COUNTERSIGN_CONFIG"])
    path.write_text(BROKEN_CONFIG)
    done = run(sqlite_env, "check-config")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    for key in BROKEN_KEYS:
        assert any(line.startswith(f"{path}: {key}: ") for line in lines), key
    assert f"{len(BROKEN_KEYS)} problem(s) found in {path}" in done.stderr
    assert "CS_TEST_UNSET_SECRET" in done.stderr


def test_check_config_exits_2_when_the_file_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    done = run(make_env(f"sqlite:///{tmp_path / 'x.db'}", missing), "check-config")
    assert done.returncode == 2
    assert f"{missing}: file not found" in done.stderr


@pytest.mark.parametrize(
    ("variable", "where"),
    [("SLACK_BOT_TOKEN", "OAuth & Permissions"), ("SLACK_SIGNING_SECRET", "Basic Information")],
)
def test_serve_exits_2_naming_the_missing_slack_variable_and_where_to_get_it(
    sqlite_env: dict[str, str], tmp_path: Path, variable: str, where: str
) -> None:
    env = {name: value for name, value in sqlite_env.items() if name != variable}
    done = run(env, "serve", "--port", "9", timeout=30)
    assert done.returncode == 2
    assert f"{variable} is not set" in done.stderr
    assert "api.slack.com/apps" in done.stderr and where in done.stderr
    assert not (tmp_path / "countersign.db").exists()


def test_serve_names_the_missing_slack_variables_even_when_the_config_file_is_missing(
    tmp_path: Path,
) -> None:
    env = {
        "COUNTERSIGN_CONFIG": str(tmp_path / "absent.toml"),
        "COUNTERSIGN_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    done = run(env, "serve", "--port", "9", timeout=30)
    assert done.returncode == 2
    assert "SLACK_BOT_TOKEN is not set" in done.stderr and "SLACK_SIGNING_SECRET is not set" in done.stderr
    assert "absent.toml" in done.stderr
    assert not (tmp_path / "x.db").exists()


def test_an_unreachable_database_is_one_line_and_exit_1_not_a_traceback(sqlite_env: dict[str, str]) -> None:
    env = sqlite_env | {"COUNTERSIGN_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = run(env, "agents", "list", timeout=30)
    assert done.returncode == 1
    assert done.stderr.startswith("database error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_serve_exits_2_without_starting_when_the_config_is_invalid(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    Path(sqlite_env["COUNTERSIGN_CONFIG"]).write_text(BROKEN_CONFIG)
    done = run(sqlite_env, "serve", "--port", "9", timeout=30)
    assert done.returncode == 2
    assert "invalid configuration" in done.stderr
    assert "categories.refund.daily_amount_cap" in done.stderr
    assert not (tmp_path / "countersign.db").exists()


def test_db_upgrade_migrates_a_fresh_database_and_is_idempotent(env: dict[str, str], db_url: str) -> None:
    for _ in range(2):
        done = run(env, "db", "upgrade")
        assert done.returncode == 0, done.stderr
        assert "up to date" in done.stdout
    engine = create_db_engine(db_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        expected = {"agent", "agent_token", "draft", "decision", "audit_event", "outbox_job", "cap_usage"}
        assert expected | {"alembic_version", "control_state", "idempotency_record"} <= tables
        assert migrate.is_current(engine)
    finally:
        engine.dispose()


def test_db_upgrade_exits_1_with_the_reason_when_the_database_refuses(tmp_path: Path) -> None:
    result = run(make_env("postgresql://postgres@127.0.0.1:1/test", write_config(tmp_path)), "db", "upgrade")
    assert result.returncode == 1
    assert result.stderr.startswith("db upgrade failed: ") and "Traceback" not in result.stderr


def test_audit_verify_exits_0_on_a_good_chain_and_1_naming_the_row_after_tampering(
    env: dict[str, str], runtime: Runtime
) -> None:
    register(runtime, "support-bot")
    register(runtime, "triage-bot")
    agents.rotate(runtime, name="triage-bot")
    good = run(env, "audit", "verify")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("audit chain ok: 3 rows, head 3 ")
    with runtime.engine.begin() as conn:
        conn.execute(sa.text("UPDATE audit_event SET actor = 'U0MALLORY' WHERE seq = 2"))
    bad = run(env, "audit", "verify")
    assert bad.returncode == 1
    assert "audit chain broken at row 2" in bad.stderr
    assert bad.stdout == ""


def test_audit_verify_with_the_digests_head_catches_deleted_newest_rows(
    env: dict[str, str], runtime: Runtime
) -> None:
    register(runtime, "support-bot")
    register(runtime, "triage-bot")
    seq, digest_hash = run(env, "audit", "verify").stdout.split()[-2:]
    published = f"#{seq} {digest_hash}"  # as the digest prints it
    assert run(env, "audit", "verify", "--head", published).returncode == 0
    with runtime.engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM audit_event WHERE seq = {seq}"))
    deleted = run(env, "audit", "verify")  # the head recorded with each append names it
    assert deleted.returncode == 1 and "the log's recorded head" in deleted.stderr
    with runtime.engine.begin() as conn:  # a thorough tamperer rewrites that head too
        conn.execute(
            sa.text(
                f"UPDATE audit_head SET seq = seq - 1, hash = (SELECT hash FROM audit_event WHERE seq = {int(seq) - 1})"
            )
        )
    assert run(env, "audit", "verify").returncode == 0  # the log alone can then not tell
    cut = run(env, "audit", "verify", "--head", published)
    assert cut.returncode == 1 and "the published head" in cut.stderr and "is gone" in cut.stderr
    assert run(env, "audit", "verify", "--head", "#2 short").returncode == 2


def snapshot(runtime: Runtime) -> tuple[Any, ...]:
    """Everything an agents command may change: the agent row, its tokens, the audit log."""
    with runtime.engine.connect() as conn:
        agent = tuple(conn.execute(sa.text("SELECT * FROM agent ORDER BY id")).all())
        tokens = tuple(conn.execute(sa.text("SELECT * FROM agent_token ORDER BY id")).all())
        events = tuple(conn.execute(sa.text("SELECT seq, action FROM audit_event ORDER BY seq")).all())
    return agent, tokens, events


@pytest.mark.parametrize("args", [[], ["--callback-secret"], ["--callback-secret", "--overlap", "0"]])
def test_agents_rotate_exits_2_and_changes_nothing_when_the_agent_was_removed(
    env: dict[str, str], runtime: Runtime, args: list[str]
) -> None:
    register(runtime)
    agents.remove(runtime, name="support-bot")
    before = snapshot(runtime)
    done = run(env, "agents", "rotate", "support-bot", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "agent 'support-bot' was removed"
    assert done.stdout == ""
    assert snapshot(runtime) == before


def test_agents_remove_exits_2_and_audits_nothing_when_the_agent_was_already_removed(
    env: dict[str, str], runtime: Runtime
) -> None:
    register(runtime)
    assert run(env, "agents", "remove", "support-bot").returncode == 0
    before = snapshot(runtime)
    assert [action for _, action in before[2]] == ["agent.added", "agent.removed"]
    done = run(env, "agents", "remove", "support-bot")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "agent 'support-bot' was already removed"
    assert done.stdout == ""
    assert snapshot(runtime) == before


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_serve_exits_2_with_a_usage_message_when_the_port_is_out_of_range(
    sqlite_env: dict[str, str], tmp_path: Path, port: str
) -> None:
    done = run(sqlite_env, "serve", "--port", port, timeout=30)
    assert done.returncode == 2
    assert "Invalid value for '--port'" in done.stderr and "Traceback" not in done.stderr
    assert "OverflowError" not in done.stderr
    assert not (tmp_path / "countersign.db").exists()


@pytest.mark.parametrize("url", ["garbage", "mysql://x/y"])
@pytest.mark.parametrize(
    "command",
    [
        ["audit", "verify"],
        ["audit", "export"],
        ["db", "upgrade"],
        ["db", "check"],
        ["db", "grant-app-role", "app"],
    ],
)
def test_a_database_command_exits_2_as_agents_list_does_when_the_database_url_is_invalid(
    sqlite_env: dict[str, str], tmp_path: Path, url: str, command: list[str]
) -> None:
    env = sqlite_env | {"COUNTERSIGN_DATABASE_URL": url}
    listed = run(env, "agents", "list")
    assert listed.returncode == 2 and "COUNTERSIGN_DATABASE_URL: expected sqlite:///PATH" in listed.stderr
    done = run(env, *command)
    assert done.returncode == 2
    assert done.stderr == listed.stderr
    assert "Traceback" not in done.stderr and "schema drift" not in done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["countersign.toml"]


@pytest.mark.parametrize("command", ["verify", "export"])
def test_audit_exits_1_without_creating_the_file_when_the_sqlite_database_does_not_exist(
    tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "nowhere" / "countersign.db"
    (tmp_path / "nowhere").mkdir()
    done = run(make_env(f"sqlite:///{missing}", write_config(tmp_path)), "audit", command)
    assert done.returncode == 1
    assert done.stderr == f"no database at {missing}\n"
    assert done.stdout == ""
    assert list((tmp_path / "nowhere").iterdir()) == []
