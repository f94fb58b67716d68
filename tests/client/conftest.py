from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col

from bot import agents
from handlers import ids
from storage.tables import Draft
from tests.harness import Harness, eventually, harness

ROOT = Path(__file__).resolve().parents[2]

# A category without an executor that carries amounts: the agent itself carries out the action.
GOODWILL = """
[categories.goodwill]
channel = "C0SUPPORT"
reviewers = ["U0ALICE", "U0BOB"]
currency = "USD"
daily_amount_cap = "100.00"
ai_review = false
"""


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # The client sees only HTTP; the server's storage is covered on both databases elsewhere.
    return f"sqlite:///{tmp_path / 'countersign.db'}"


@pytest.fixture
async def h(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(db_url, tmp_path, extra_config=GOODWILL) as value:
        yield value


@pytest.fixture
def url(h: Harness) -> str:
    return str(h.client.make_url("")).rstrip("/")


@pytest.fixture
def goodwill_token(h: Harness) -> str:
    return agents.add(h.rt, name="goodwill-bot", categories=["goodwill", "reply"], callback_prefixes=[]).token


class Drafts:
    """Finds the drafts the code under test submitted, once Slack shows them, one at a time."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.seen: set[str] = set()

    async def next(self, status: str = "pending") -> str:
        def probe() -> str | None:
            with self.h.rt.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(col(Draft.id))
                    .where(col(Draft.status) == status, col(Draft.slack_ts).is_not(None))
                    .order_by(col(Draft.created_at))
                ).all()
            fresh = [r[0] for r in rows if r[0] not in self.seen]
            return fresh[0] if fresh else None

        draft_id: str = await eventually(probe)
        self.seen.add(draft_id)
        return draft_id


@pytest.fixture
def drafts(h: Harness) -> Drafts:
    return Drafts(h)


async def approve(h: Harness, draft_id: str, user: str = "U0ALICE") -> None:
    status, _ = await h.click(user, ids.APPROVE, draft_id)
    assert status == 200


async def _modal(h: Harness, user: str, action_id: str, draft_id: str) -> str:
    before = len(h.slack.calls("views.open"))
    status, _ = await h.click(user, action_id, draft_id)
    assert status == 200
    opened = await eventually(lambda: h.slack.calls("views.open")[before:])
    return str(opened[0].params["view"]["private_metadata"])


async def edit(h: Harness, draft_id: str, text: str, amount: str | None = None, user: str = "U0BOB") -> None:
    meta = await _modal(h, user, ids.EDIT, draft_id)
    values: dict[str, Any] = {
        ids.EDIT_BODY_BLOCK: {ids.EDIT_BODY_INPUT: {"type": "plain_text_input", "value": text}}
    }
    if amount is not None:
        values[ids.EDIT_AMOUNT_BLOCK] = {ids.EDIT_AMOUNT_INPUT: {"type": "plain_text_input", "value": amount}}
    status, body = await h.submit_view(user, ids.EDIT_MODAL, meta, values)
    assert status == 200 and "errors" not in body, body


async def reject(h: Harness, draft_id: str, reason: str, user: str = "U0ALICE") -> None:
    meta = await _modal(h, user, ids.REJECT, draft_id)
    values = {
        ids.REJECT_REASON_BLOCK: {ids.REJECT_REASON_INPUT: {"type": "plain_text_input", "value": reason}}
    }
    status, body = await h.submit_view(user, ids.REJECT_MODAL, meta, values)
    assert status == 200 and "errors" not in body, body


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """Run blocking client code in a thread while the test's loop serves Countersign."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    await asyncio.sleep(0)
    return task


def load_example(relative: str) -> ModuleType:
    """An example script (not a package) imported as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
