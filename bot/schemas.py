"""What agents may send: non-table pydantic models that forbid unknown fields.

Table models skip validation, so every request body is parsed here first; a field the agent
must not set (`status`, `approved_by`, …) is a 422, never silently assigned.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from bot.risk.text import visible_form

SLACK_USER_RE = re.compile(r"[UW][A-Z0-9]{2,20}")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
CURRENCY_RE = re.compile(r"[A-Z]{3}")

MAX_TEXT = 40_000
MAX_PAYLOAD_DEPTH = 32


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a deep value must not overflow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def clean_text(value: str) -> str:
    """Reject text no database or Slack message can hold faithfully."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (lone surrogate found)") from None
    return value


def is_blank(value: str) -> bool:
    """Nothing a reader would see: whitespace, or only invisible marks (zero-width spaces,
    direction marks, soft hyphens) around it."""
    return not visible_form(value).strip()


Text = Annotated[StrictStr, Field(max_length=MAX_TEXT)]


class DraftIn(BaseModel):
    """POST /v1/drafts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Annotated[StrictStr, Field(min_length=1, max_length=40)]
    summary: Annotated[StrictStr, Field(min_length=1, max_length=300)]
    body: Text
    context: Text | None = None
    amount: StrictStr | None = None
    currency: StrictStr | None = None
    payload: dict[str, Any] | None = None
    callback_url: Annotated[StrictStr, Field(max_length=2000)] | None = None
    requested_by: StrictStr | None = None
    idempotency_key: StrictStr | None = None

    @field_validator("category", "summary", "body", "context", "callback_url")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else clean_text(value)

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            if _depth(value) > MAX_PAYLOAD_DEPTH:
                raise ValueError(f"must not nest deeper than {MAX_PAYLOAD_DEPTH} levels")
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode (lone surrogate found)") from None
        return value

    @field_validator("summary")
    @classmethod
    def _summary(cls, value: str) -> str:
        if is_blank(value):
            raise ValueError("must not be blank")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str | None) -> str | None:
        if value is not None and not CURRENCY_RE.fullmatch(value):
            raise ValueError("must be an ISO 4217 code like USD")
        return value

    @field_validator("requested_by")
    @classmethod
    def _requested_by(cls, value: str | None) -> str | None:
        if value is not None and not SLACK_USER_RE.fullmatch(value):
            raise ValueError("must be a Slack user id like U0123ABCD")
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not IDEMPOTENCY_KEY_RE.fullmatch(value):
            raise ValueError("must be 1-255 printable ASCII characters")
        return value


class DoneIn(BaseModel):
    """POST /v1/drafts/{id}/done."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: StrictBool
    detail: Annotated[StrictStr, Field(max_length=2000)] | None = None

    @field_validator("detail")
    @classmethod
    def _detail(cls, value: str | None) -> str | None:
        return None if value is None else clean_text(value)
