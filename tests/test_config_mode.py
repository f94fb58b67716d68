"""A category's `mode` in the config file (DESIGN.md: a category has a mode `review | manual`
"from the config file"): `mode = "manual"` sends the category's work to humans for as long as the
config says so; Slack cannot lift it, and a config that stops saying so ends only the switch the
config set (both databases)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.control import Control
from bot.settings import check_config
from tests.harness import Harness, eventually, harness

MANUAL = 'mode = "manual"\n'  # appended to the test config's last table, [categories.reply]


def _reply(**fields: str) -> dict[str, str]:
    return {"category": "reply", "summary": "s", "body": "Your order ships Monday."} | fields


def _mode_events(h: Harness) -> list[tuple[str, str]]:
    with h.rt.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT actor, action FROM audit_event WHERE subject = 'category:reply'"
                " AND action IN ('category.manual', 'category.review') ORDER BY seq"
            )
        ).all()
    return [(str(actor), str(action)) for actor, action in rows]


async def test_a_category_the_config_sets_to_manual_sends_its_drafts_to_humans(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path, extra_config=MANUAL) as h:
        draft = await h.submit(**_reply())
        assert (draft["status"], draft.get("reason")) == ("manual", "category_manual")
        refund = await h.submit()
        assert refund["status"] == "pending"  # only the category the config names
        me = await (await h.client.get("/v1/agents/me", headers=h.auth())).json()
        assert (me["categories"]["reply"]["mode"], me["categories"]["refund"]["mode"]) == ("manual", "review")
        assert _mode_events(h) == [("config", "category.manual")]
        await eventually(lambda: [a for a in h.alerts() if "config file sets *reply* to manual" in a])

        refused = await h.command("U0ADMIN", "review reply")
        assert 'the config file says `mode = "manual"`' in refused
        boxed = await h.command("U0BOB", "manual reply 1h")  # a time box would lapse into review
        assert 'the config file says `mode = "manual"`' in boxed
        assert "manual" in await h.command("U0ALICE", "status")

        again = await h.submit(**_reply(body="Your order ships Tuesday."))
        assert (again["status"], again.get("reason")) == ("manual", "category_manual")
        assert _mode_events(h) == [("config", "category.manual")]


async def test_a_config_that_stops_saying_manual_ends_only_the_switch_it_set(
    db_url: str, tmp_path: Path
) -> None:
    async with harness(db_url, tmp_path, extra_config=MANUAL) as h:
        agent = (h.token, h.callback_secret)
    async with harness(db_url, tmp_path, agent=agent) as h:
        assert (await h.submit(**_reply()))["status"] == "pending"
        assert _mode_events(h) == [("config", "category.manual"), ("config", "category.review")]
        await eventually(lambda: [a for a in h.alerts() if "config file returned *reply* to review" in a])
        await h.command("U0BOB", "manual reply")
    async with harness(db_url, tmp_path, agent=agent) as h:
        # A person's switch is not the config's to end.
        assert (await h.submit(**_reply()))["status"] == "manual"
        assert _mode_events(h)[-1] == ("slack:U0BOB", "category.manual")


async def test_the_config_replaces_a_time_boxed_switch_that_would_lapse(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as h:
        await h.command("U0BOB", "manual reply 1h")
        agent = (h.token, h.callback_secret)
    async with harness(db_url, tmp_path, agent=agent, extra_config=MANUAL) as h:
        h.clock.advance(hours=2)
        assert Control(rt=h.rt, directory=None).revert_lapsed() == 0  # type: ignore[arg-type]
        assert (await h.submit(**_reply()))["status"] == "manual"
        assert _mode_events(h) == [("slack:U0BOB", "category.manual"), ("config", "category.manual")]


@pytest.mark.parametrize(
    ("value", "ok"), [('"manual"', True), ('"review"', True), ('"auto"', False), ("true", False)]
)
def test_check_config_takes_review_or_manual_as_a_categorys_mode(
    tmp_path: Path, value: str, ok: bool
) -> None:
    path = tmp_path / "countersign.toml"
    path.write_text(f'[categories.reply]\nchannel = "C01"\nreviewers = ["U01"]\nmode = {value}\n')

    problems = check_config(path, {})

    assert [p.key for p in problems] == ([] if ok else ["categories.reply.mode"])
