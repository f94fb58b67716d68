from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from bot.runtime import Runtime
from handlers import ids
from tests.conftest import SIGNING_SECRET, Api
from tests.doubles import signing
from tests.harness import eventually, harness

REPLY = {"category": "reply", "summary": "Answer", "body": "Your order ships Monday."}


def break_database(rt: Runtime) -> None:
    """Make the control state unreadable: the tables vanish under the running server."""
    engine = rt.engine
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database or "")
        engine.dispose()
        path.rename(path.with_suffix(".gone"))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        with engine.begin() as conn:
            schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        engine.dispose()


async def test_the_api_answers_503_when_the_control_state_cannot_be_read(api: Api) -> None:
    created = await api.client.post("/v1/drafts", json=REPLY, headers=api.auth())
    draft_id = (await created.json())["id"]
    break_database(api.rt)
    for method, path, body in [
        ("POST", "/v1/drafts", REPLY),
        ("GET", f"/v1/drafts/{draft_id}", None),
        ("GET", "/v1/agents/me", None),
    ]:
        response = await api.client.request(method, path, json=body, headers=api.auth())
        assert response.status == 503, (method, path)
        assert (await response.json())["error"]["code"] == "unavailable"
    assert (await api.client.get("/readyz")).status == 503


async def test_no_approval_when_the_control_state_cannot_be_read(db_url: str, tmp_path: Path) -> None:
    async with harness(db_url, tmp_path) as h:
        created = await h.submit()
        payload = await h.click_payload("U0ALICE", ids.APPROVE, created["id"])
        break_database(h.rt)
        await h.post_signed(signing.interactive(SIGNING_SECRET, payload))
        await eventually(lambda: any("cannot read its control state" in t for t in h.ephemeral_texts()))
        assert h.executor.requests == []
        answer = await h.command("U0ALICE", "pause support-bot")
        assert "cannot read or write its control state" in answer
