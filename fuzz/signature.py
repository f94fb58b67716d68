"""Target `signature`: the /slack/events pre-check of X-Slack-Request-Timestamp / X-Slack-Signature.

Input: `FLAGS\\nTIMESTAMP\\nSIGNATURE\\nBODY`. FLAGS may hold `s` (replace SIGNATURE by the
correct one, so the accepting path is reached), `T` / `S` (leave that header out). Header
bytes are decoded as aiohttp decodes them (UTF-8, surrogateescape).
The pre-check must answer None or a reason, never raise; None must mean an independently
checked, fresh, correct signature over a UTF-8 body.
"""

from __future__ import annotations

import hashlib
import hmac

from multidict import CIMultiDict

from bot.slack_app import check_signature

SECRET = "fuzz-signing-secret"  # noqa: S105
NOW = 1_700_000_000.0


def _expected(timestamp: bytes, body: bytes) -> str:
    mac = hmac.new(SECRET.encode(), b"v0:" + timestamp + b":" + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


def one_input(data: bytes) -> None:
    flags, timestamp, signature, body = ([*data.split(b"\n", 3), b"", b"", b""])[:4]
    if b"s" in flags:
        signature = _expected(timestamp, body).encode()
    headers: CIMultiDict[str] = CIMultiDict()
    if b"T" not in flags:
        headers["X-Slack-Request-Timestamp"] = timestamp.decode("utf-8", "surrogateescape")
    if b"S" not in flags:
        headers["X-Slack-Signature"] = signature.decode("utf-8", "surrogateescape")
    why = check_signature(headers, body, secret=SECRET, now=NOW)
    if why is None:
        assert b"T" not in flags and b"S" not in flags
        assert timestamp.isascii() and timestamp.isdigit() and abs(NOW - int(timestamp)) <= 300
        body.decode("utf-8")
        assert hmac.compare_digest(signature, _expected(timestamp, body).encode())
    else:
        assert isinstance(why, str) and why
