"""The `countersign` command: a thin CLI over the use-cases.

Exit codes: 0 ok, 1 operational failure, 2 usage or config error (missing credentials included).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from bot.errors import CountersignError
from bot.runtime import Runtime
from bot.settings import (
    ConfigError,
    Problem,
    Settings,
    check_config,
    load_settings,
    missing_slack_credentials,
    parse_duration,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Slack-native approval gate for AI agents."
)
agents_app = typer.Typer(no_args_is_help=True, help="Register and manage agents.")
audit_app = typer.Typer(no_args_is_help=True, help="Verify and export the audit log.")
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
app.add_typer(agents_app, name="agents")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(f"invalid configuration:\n{exc}", 2)


def database_url_or_exit() -> str:
    """COUNTERSIGN_DATABASE_URL for the commands that need no config file, checked by load_settings as
    for every other command: exit 2 with the same message when it names no database we support."""
    try:
        return load_settings().database_url
    except ConfigError as exc:
        wrong = [p for p in exc.problems if p.key == "COUNTERSIGN_DATABASE_URL"]
        if wrong:
            fail(f"invalid configuration:\n{ConfigError(wrong)}", 2)
    return os.environ.get("COUNTERSIGN_DATABASE_URL") or "sqlite:///countersign.db"


def engine_or_exit(url: str) -> Engine:
    from sqlalchemy.exc import ArgumentError

    from storage.db import create_db_engine

    try:
        return create_db_engine(url)
    except (ArgumentError, ValueError) as exc:  # a supported scheme, yet no URL SQLAlchemy can use
        problem = Problem("environment", "COUNTERSIGN_DATABASE_URL", str(exc).strip().splitlines()[0])
        fail(f"invalid configuration:\n{problem}", 2)


def existing_database_or_exit(engine: Engine) -> Engine:
    """The engine, unless it names a SQLite file that does not exist: opening it would create one."""
    from storage.db import is_sqlite

    path = engine.url.database
    if is_sqlite(engine) and path and path != ":memory:" and not Path(path).exists():
        fail(f"no database at {path}", 1)
    return engine


def runtime(settings: Settings) -> Runtime:
    from bot.dbclock import DatabaseClock
    from storage import migrate

    engine = engine_or_exit(settings.database_url)
    migrate.upgrade(engine)
    return Runtime(engine=engine, config=settings.config, clock=DatabaseClock.measured(engine))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 3000,
    socket_mode: Annotated[
        bool, typer.Option("--socket-mode", help="Receive Slack over Socket Mode.")
    ] = False,
) -> None:
    """Run the agent API, the Slack app and the background workers."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        # A first run often lacks both: name the missing Slack variables too.
        lacking = missing_slack_credentials(os.environ, socket_mode=socket_mode)
        fail("\n".join([*lacking, f"invalid configuration:\n{exc}"]), 2)
    missing = missing_slack_credentials(settings, socket_mode=socket_mode)
    if missing:
        fail("\n".join(missing), 2)
    from bot import logs
    from bot.server import SharedSQLite, run

    logs.configure(os.environ.get("COUNTERSIGN_LOG_LEVEL", "INFO"))
    try:
        run(settings, host=host, port=port, socket_mode=socket_mode)
    except SharedSQLite as exc:
        fail(str(exc), 2)


@app.command("check-config")
def check_config_command() -> None:
    """Validate the config file and print every problem found."""
    path = Path(os.environ.get("COUNTERSIGN_CONFIG", "countersign.toml"))
    problems = check_config(path, os.environ)
    if problems:
        for problem in problems:
            typer.echo(str(problem), err=True)
        fail(f"{len(problems)} problem(s) found in {path}", 2)
    typer.echo(f"{path}: ok")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    from sqlalchemy.exc import DBAPIError

    from storage import migrate

    engine = engine_or_exit(database_url_or_exit())
    try:
        migrate.upgrade(engine)
    except DBAPIError as exc:
        # Unreachable, or a role that may not change the schema (run it as the owner).
        typer.echo(f"db upgrade failed: {str(exc.orig).strip()}", err=True)
        raise typer.Exit(1) from None
    typer.echo("database is up to date")


@db_app.command("check")
def db_check() -> None:
    """Exit 1 when the tables and the migrations disagree (Alembic's `check`)."""
    from storage import migrate

    engine = engine_or_exit(database_url_or_exit())
    try:
        migrate.check(engine)
    except Exception as exc:
        fail(f"schema drift: {exc}", 1)
    typer.echo("models and migrations agree")


@db_app.command("prune")
def db_prune() -> None:
    """Delete what is kept only for a while: delivered outbox jobs after 7 days, jobs that gave
    up after 30, Idempotency-Key answers after 24 hours. The server does this every hour."""
    from bot import retention

    pruned = retention.prune(runtime(settings_or_exit()))
    typer.echo(
        f"deleted {pruned.done_jobs} delivered and {pruned.dead_jobs} dead outbox jobs,"
        f" {pruned.idempotency_records} idempotency records"
    )


@db_app.command("grant-app-role")
def db_grant_app_role(
    role: Annotated[str, typer.Argument(help="The PostgreSQL role the server connects as.")],
) -> None:
    """PostgreSQL, run as the schema owner: grant ROLE what the server needs; the audit log stays append-only."""
    import psycopg
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import is_sqlite
    from storage.privileges import GrantRefused, grant_app_role

    engine = engine_or_exit(database_url_or_exit())
    if is_sqlite(engine):
        fail(
            "SQLite has no roles or grants: whoever can write the database file can change any table. "
            "There, tamper evidence is the audit log's hash chain (`countersign audit verify`).",
            2,
        )
    try:
        granted = grant_app_role(engine, role)
    except GrantRefused as exc:
        fail(f"not granted: {exc}", 2)
    except (SQLAlchemyError, psycopg.Error) as exc:
        fail(f"nothing granted: {exc}", 1)
    finally:
        engine.dispose()
    typer.echo(
        f"granted {granted.role} the server's privileges on {granted.tables} tables in schema "
        f"{granted.schema}; on audit_event only SELECT and INSERT"
    )


@agents_app.command("add")
def agents_add(
    name: str,
    categories: Annotated[str, typer.Option(help="Comma-separated categories the agent may submit to.")],
    callback_prefix: Annotated[
        list[str] | None,
        typer.Option(help="URL prefix the agent's callback_url must start with (repeatable)."),
    ] = None,
) -> None:
    """Register an agent; prints its token and callback signing secret once."""
    from bot import agents

    rt = runtime(settings_or_exit())
    names = [c.strip() for c in categories.split(",") if c.strip()]
    try:
        registered = agents.add(rt, name=name, categories=names, callback_prefixes=callback_prefix or [])
    except CountersignError as exc:
        fail(exc.message, 2)
    typer.echo(f"agent: {registered.name}")
    typer.echo(f"token: {registered.token}")
    typer.echo(f"callback_secret: {registered.callback_secret}")
    typer.echo("Store both now: they are not shown again.", err=True)


@agents_app.command("list")
def agents_list() -> None:
    """List agents with their state and categories."""
    from bot import agents

    rt = runtime(settings_or_exit())
    for agent in agents.list_all(rt):
        state = "removed" if not agent.categories else agent.state + (" (offline)" if agent.offline else "")
        typer.echo(f"{agent.name}\t{state}\t{agent.categories or '-'}")


@agents_app.command("rotate")
def agents_rotate(
    name: str,
    callback_secret: Annotated[
        bool,
        typer.Option(
            "--callback-secret",
            help="Rotate the callback signing secret instead of the token.",
        ),
    ] = False,
    overlap: Annotated[
        str | None,
        typer.Option(
            help="With --callback-secret: how long the old secret also signs callbacks (default 24h; 0 stops it at once)."
        ),
    ] = None,
) -> None:
    """Revoke the agent's token and print a new one; or, with --callback-secret, its callback secret."""
    from bot import agents

    rt = runtime(settings_or_exit())
    if not callback_secret:
        if overlap is not None:
            fail("--overlap goes with --callback-secret: a rotated token stops working at once", 2)
        try:
            token = agents.rotate(rt, name=name)
        except CountersignError as exc:
            fail(exc.message, 2)
        typer.echo(f"token: {token}")
        return
    try:
        kept = timedelta(0) if overlap in ("0", "0s") else parse_duration(overlap or "24h")
    except ValueError as exc:
        fail(f"--overlap: {exc}", 2)
    try:
        secret, until = agents.rotate_callback_secret(rt, name=name, overlap=kept)
    except CountersignError as exc:
        fail(exc.message, 2)
    typer.echo(f"callback_secret: {secret}")
    if until is not None:
        typer.echo(
            f"Callbacks carry a signature by the old secret too until {until:%Y-%m-%d %H:%M:%S} UTC.",
            err=True,
        )
    else:
        typer.echo("The old secret signs no callback from now on.", err=True)
    typer.echo("Store the new secret now: it is not shown again.", err=True)


@agents_app.command("remove")
def agents_remove(name: str) -> None:
    """Revoke the agent's tokens; its drafts and audit trail stay."""
    from bot import agents

    rt = runtime(settings_or_exit())
    try:
        agents.remove(rt, name=name)
    except CountersignError as exc:
        fail(exc.message, 2)
    typer.echo(f"removed {name}")


def parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        fail(f"not a date: {text!r} (use YYYY-MM-DD or an ISO 8601 datetime)", 2)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _day(text: str, settings: Settings) -> date:
    """A day given as YYYY-MM-DD, or as an ISO 8601 datetime (its day in the configured time zone
    when it has an offset)."""
    if len(text) == 10:
        return date.fromisoformat(text)
    value = datetime.fromisoformat(text)
    return value.astimezone(settings.config.timezone).date() if value.tzinfo else value.date()


@audit_app.command("verify")
def audit_verify(
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            help="A head published earlier, as the digest prints it (e.g. '#1234 9f2c…'): it must still be"
            " in the chain, so deleting the newest rows is caught too.",
        ),
    ] = None,
) -> None:
    """Check the hash chain; exit 1 naming the first bad row."""
    from bot import audit

    witness = None
    if head is not None:
        seq, _, digest_hash = head.strip().lstrip("#").replace(":", " ").partition(" ")
        if not seq.isdigit() or len(digest_hash.strip()) != 64:
            fail(f"--head wants a sequence number and a 64-character hash, like the digest's: {head!r}", 2)
        witness = (int(seq), digest_hash.strip())
    engine = existing_database_or_exit(engine_or_exit(database_url_or_exit()))
    result = audit.verify(engine, witness=witness)
    if not result.ok:
        fail(f"audit chain broken at row {result.bad_seq}: {result.problem}", 1)
    typer.echo(f"audit chain ok: {result.rows} rows, head {result.head_seq} {result.head_hash}")


@audit_app.command("export")
def audit_export(
    since: Annotated[
        str | None,
        typer.Option(
            help="Only events at or after this date (YYYY-MM-DD) or ISO 8601 datetime; UTC unless it has an offset."
        ),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
) -> None:
    """Write the audit log to stdout."""
    from bot import audit

    if format not in ("jsonl", "csv"):
        fail("--format must be jsonl or csv", 2)
    start = parse_since(since)  # a usage error is reported before anything is opened
    engine = existing_database_or_exit(engine_or_exit(database_url_or_exit()))
    for chunk in audit.export(engine, since=start, fmt=format):
        sys.stdout.write(chunk)


@app.command()
def digest(
    date_: Annotated[
        str | None, typer.Option("--date", help="Day to cover, YYYY-MM-DD (default: today so far).")
    ] = None,
    print_: Annotated[bool, typer.Option("--print", help="Print the digest instead of posting it.")] = False,
) -> None:
    """Build a day's digest; post it to the digest channel or print it."""
    import asyncio

    from bot import digest as digest_module
    from bot import slack

    settings = settings_or_exit()
    rt = runtime(settings)
    now = rt.clock()
    today = now.astimezone(settings.config.timezone).date()
    try:
        day = today if date_ is None else _day(date_, settings)
    except ValueError:
        fail(f"not a date: {date_!r} (use YYYY-MM-DD or an ISO 8601 datetime)", 2)
    if day > today:
        fail(
            f"{day.isoformat()} has not begun yet in {settings.config.timezone.key} (today is {today.isoformat()})",
            2,
        )
    built = digest_module.build(rt, day, until=now if day == today else None)
    if print_:
        typer.echo(built.text())
        return
    channel = settings.config.digest_channel
    if channel is None:
        fail("no [digest] channel in the config file; use --print or add one", 2)
    if not settings.slack_bot_token:
        fail(missing_slack_credentials(settings, socket_mode=False)[0], 2)
    asyncio.run(slack.post_digest(slack.make_client(settings), channel, built))
    typer.echo(f"digest of {day.isoformat()} posted to {channel}")


risk_app = typer.Typer(no_args_is_help=True, help="Try the risk checks on past tickets.")
app.add_typer(risk_app, name="risk")


@risk_app.command("check")
def risk_check(
    file: Annotated[Path, typer.Argument(help="JSON lines: category, body, context?, amount?, currency?")],
    llm: Annotated[
        bool, typer.Option("--llm", help="Add the Claude reviewer (needs ANTHROPIC_API_KEY).")
    ] = False,
) -> None:
    """Run the risk checks offline: one JSON line per input line on stdout, a summary on stderr."""
    from collections import Counter

    from bot import riskcheck

    settings = settings_or_exit()
    if llm and not settings.anthropic_api_key:
        fail(
            "ANTHROPIC_API_KEY is not set (needed for --llm): create a key in the Anthropic Console at"
            " https://console.anthropic.com/settings/keys and export it, or drop --llm.",
            2,
        )
    try:
        lines = riskcheck.split_lines(file.read_bytes().decode("utf-8"))
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", 2)
    except UnicodeDecodeError as exc:
        fail(f"cannot read {file}: not valid UTF-8 (byte {exc.start})", 2)
    levels: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    unreviewed = 0
    for number, result in enumerate(riskcheck.check_lines(settings, lines, llm=llm), start=1):
        typer.echo(json.dumps({"line": number} | result, ensure_ascii=False))
        levels[result.get("level", "error") if "error" not in result else "error"] += 1
        codes.update(f["code"] for f in result.get("findings", []))
        unreviewed += result.get("llm") == "unavailable"
    summary = ", ".join(
        f"{level} {levels[level]}" for level in ("high", "medium", "low", "none", "error") if levels[level]
    )
    typer.echo(f"{len(lines)} drafts: {summary or 'none'}", err=True)
    if unreviewed:
        typer.echo(f"  AI review unavailable for {unreviewed}: rules only (see llm_note)", err=True)
    for code, count in codes.most_common(10):
        typer.echo(f"  {code}: {count}", err=True)


@app.command()
def mcp(
    agent_token: Annotated[
        str,
        typer.Option(envvar="COUNTERSIGN_AGENT_TOKEN", help="The agent's token, as printed by `agents add`."),
    ],
    url: Annotated[
        str, typer.Option(envvar="COUNTERSIGN_URL", help="Base URL of the running Countersign server.")
    ] = "http://127.0.0.1:3000",
) -> None:
    """Serve MCP over stdio for one agent: approval tools for MCP-capable agents."""
    try:
        from bot.mcp_server import serve
    except ImportError as exc:
        fail(f"`countersign mcp` needs the mcp package and the client (pip install ./client): {exc}", 2)
    import anyio

    anyio.run(serve, agent_token, url)


def main() -> None:
    """Entry point of the console script and `python -m bot`.

    Operational failures (the database or Slack unreachable) exit 1 with one line, not a traceback;
    anything else is a bug and keeps its traceback.
    """
    from slack_sdk.errors import SlackApiError
    from sqlalchemy.exc import DBAPIError

    try:
        app()
    except DBAPIError as exc:
        first = str(exc.orig or exc).strip().splitlines()[0]
        sys.exit(f"database error: {first}")  # a message: printed to stderr, exit status 1
    except (SlackApiError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.exit(f"operational error: {first}")
