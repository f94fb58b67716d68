"""The intake benchmark's floor: a bare aiohttp handler that checks a bearer token and does one
durable insert per request: SQLite (WAL, synchronous=FULL), or PostgreSQL (autocommit, the
server's own durable commit: fsync and synchronous_commit on).

bench/intake.py runs it as `python bench/bare_insert.py DATABASE PORT [--risk-rules]`, with the
token to accept in the BARE_TOKEN environment variable. DATABASE is a SQLite file path, or a
`postgresql://` URL. The handler inserts into the table BARE_TABLE names (default `draft`;
created if missing, left for the caller to drop). It has no idempotency, audit, risk checks or outbox: it is the least any durable
intake endpoint has to do. With --risk-rules it also runs
Countersign's risk rules on each draft in the handler, before the insert, with the settings of
the `reply` category in the config COUNTERSIGN_CONFIG names: the floor for an intake that checks
each draft as it arrives, as DESIGN.md's has to.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from aiohttp import web

Insert = Callable[[Sequence[str | None]], object]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = (
    "id TEXT PRIMARY KEY, agent TEXT NOT NULL, idempotency_key TEXT, category TEXT NOT NULL,"
    " summary TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL"
)


def main() -> None:
    database, port = sys.argv[1], int(sys.argv[2])
    check = _risk_rules() if "--risk-rules" in sys.argv[3:] else None
    agents = {hashlib.sha256(os.environ["BARE_TOKEN"].encode()).hexdigest(): "bench"}
    table = os.environ.get("BARE_TABLE", "draft")
    if database.startswith("postgresql://"):
        insert = _postgresql(database, table)
    else:
        insert = _sqlite(database, table)

    async def post_draft(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        agent = agents.get(hashlib.sha256(token.strip().encode()).hexdigest())
        if scheme.lower() != "bearer" or agent is None:
            return web.json_response({"error": {"code": "unauthorized", "message": "bad token"}}, status=401)
        data = await request.json()
        if check is not None:
            check(data["body"], data.get("context"))
        draft_id = "d_" + uuid.uuid4().hex
        # Autocommit: the INSERT is its own transaction, durable before we answer.
        insert(
            (
                draft_id,
                agent,
                request.headers.get("Idempotency-Key"),
                data["category"],
                data["summary"],
                data["body"],
                datetime.now(UTC).isoformat(),
            ),
        )
        url = f"{request.scheme}://{request.host}/v1/drafts/{draft_id}"
        return web.json_response({"id": draft_id, "status": "pending", "url": url}, status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/drafts", post_draft)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _sqlite(path: str, table: str) -> Insert:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({COLUMNS})")
    statement = f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)"
    return lambda row: db.execute(statement, row)


def _postgresql(url: str, table: str) -> Insert:
    db = psycopg.connect(url, autocommit=True)
    db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({COLUMNS})")
    statement = f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s, %s)"
    return lambda row: db.execute(statement, row, prepare=True)


def _risk_rules() -> Callable[[str, str | None], object]:
    """Countersign's risk rules as its server runs them for the `reply` category of the config
    that COUNTERSIGN_CONFIG names (bench/intake.py writes it)."""
    sys.path.insert(0, ROOT)
    from bot.intake import risk_rules
    from bot.risk import check_rules
    from bot.settings.config import load_config

    config = load_config(Path(os.environ["COUNTERSIGN_CONFIG"]), os.environ)
    rules = risk_rules(config.categories["reply"])

    def check(body: str, context: str | None) -> object:
        return check_rules(rules=rules, body=body, context=context, amount=None, currency=None)

    return check


if __name__ == "__main__":
    main()
