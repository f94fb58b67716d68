"""A deduplicating executor for Countersign: verify the webhook, act once per draft, answer.

Countersign calls a category's executor after a human approved a draft, and delivers at least
once: every retry of one execution carries the same key (the draft id). This receiver turns that
into exactly-once effects by looking the key up and recording the outcome in one SQLite
transaction, held while the effect runs, so two deliveries of one draft (a retry racing a slow
first attempt, two Countersign replicas) act once and get the same answer.

    REFUND_EXECUTOR_SECRET=whsec_... python dedup_executor.py --port 8081 --db effects.db

and in countersign.toml:

    executor = { url = "http://127.0.0.1:8081/refunds", secret_env = "REFUND_EXECUTOR_SECRET" }

Adapt `carry_out`. If the effect lives outside this database (a payment API), pass the key on
to it as that API's own idempotency key, so a crash between the effect and the commit below
cannot act twice either. Answers: 200 done (or a duplicate of a done delivery), 401 bad
signature, 422 refused for good (Countersign marks the draft failed and does not retry), 5xx
anything else (Countersign retries with the same key).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from countersign_client import WebhookVerificationError, verify_webhook

log = logging.getLogger("dedup_executor")

MAX_BODY = 1024 * 1024


class Refused(Exception):
    """The action must not happen (e.g. the order is already refunded): answered 422, not retried."""


CarryOut = Callable[[sqlite3.Connection, str, dict[str, Any]], dict[str, Any]]


def record_refund(db: sqlite3.Connection, key: str, message: dict[str, Any]) -> dict[str, Any]:
    """The demo effect: a refund row in the same database, so it commits with the dedup record."""
    db.execute(
        "INSERT INTO refunds (draft_id, amount, currency, note) VALUES (?, ?, ?, ?)",
        (key, message.get("amount"), message.get("currency"), message.get("approved_body")),
    )
    return {"refund": key}


class Executor:
    def __init__(self, secret: str, db_path: str, carry_out: CarryOut = record_refund) -> None:
        self.secret = secret
        self.db_path = db_path
        self.carry_out = carry_out
        self._lock = threading.Lock()  # one writer per process; BEGIN IMMEDIATE orders processes
        with closing(self._connect()) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS deliveries (key TEXT PRIMARY KEY, status INTEGER, answer TEXT)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS refunds (draft_id TEXT, amount TEXT, currency TEXT, note TEXT)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def handle(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one delivery."""
        try:
            message = verify_webhook(self.secret, body, headers)
        except WebhookVerificationError as error:
            return 401, {"error": str(error)}
        key = message.idempotency_key
        with self._lock, closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT status, answer FROM deliveries WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    db.execute("COMMIT")
                    return int(row[0]), json.loads(row[1]) | {"duplicate": True}
                try:
                    status, answer = 200, {"ok": True, **self.carry_out(db, key, message.payload)}
                except Refused as refusal:
                    status, answer = 422, {"ok": False, "error": str(refusal)}
                db.execute(
                    "INSERT INTO deliveries (key, status, answer) VALUES (?, ?, ?)",
                    (key, status, json.dumps(answer)),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return status, answer | {"duplicate": False}


def make_server(executor: Executor, host: str = "127.0.0.1", port: int = 8081) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413, {"error": "too large"})
                return
            body = self.rfile.read(length)
            try:
                status, answer = executor.handle(body, dict(self.headers.items()))
            except Exception:
                log.exception("execution failed")
                status, answer = 500, {"error": "internal error; retry with the same key"}
            self._answer(status, answer)

        def _answer(self, status: int, answer: dict[str, Any]) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s " + format, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--db", default="effects.db")
    parser.add_argument("--secret-env", default="REFUND_EXECUTOR_SECRET")
    args = parser.parse_args()
    secret = os.environ.get(args.secret_env)
    if not secret:
        parser.error(f"set {args.secret_env} to the executor's whsec_ secret")
    logging.basicConfig(level="INFO")
    server = make_server(Executor(secret, args.db), args.host, args.port)
    log.info("executor listening on http://%s:%d", *server.server_address[:2])
    server.serve_forever()


if __name__ == "__main__":
    main()
