from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from bot import agents, audit
from storage import migrate
from storage.tables import Draft, IdempotencyRecord
from tests.conftest import Api, FrozenClock

REFUND = {
    "category": "refund",
    "summary": "Refund order 1042",
    "body": "Hi Dana, I've issued a refund of $30.00 to your card.",
    "context": "My order 1042 arrived broken, can I get a refund?",
    "amount": "30.00",
}


def count(api: Api, table: Any) -> int:
    with api.rt.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


async def submit(api: Api, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
    response = await api.client.post("/v1/drafts", json=body, headers=api.auth() | headers)
    return response.status, await response.json()


async def test_submit_returns_202_pending_with_url(api: Api) -> None:
    status, body = await submit(api, REFUND)
    assert status == 202
    assert body["status"] == "pending"
    assert body["url"].endswith(f"/v1/drafts/{body['id']}")
    assert "reason" not in body


@pytest.mark.parametrize("how", ["rotate", "remove"])
async def test_a_rotated_or_removed_token_is_refused_at_once_everywhere(api: Api, how: str) -> None:
    # Every endpoint has just seen the token (intake caches it), then it is revoked.
    status, created = await submit(api, REFUND)
    assert status == 202
    for path in (f"/v1/drafts/{created['id']}", "/v1/agents/me"):
        assert (await api.client.get(path, headers=api.auth())).status == 200
    if how == "rotate":
        agents.rotate(api.rt, name="support-bot")
    else:
        agents.remove(api.rt, name="support-bot")
    status, body = await submit(api, REFUND | {"summary": "after"})
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    for path in (f"/v1/drafts/{created['id']}", "/v1/agents/me"):
        assert (await api.client.get(path, headers=api.auth())).status == 401
    assert (await api.client.post("/v1/heartbeat", headers=api.auth())).status == 401
    assert count(api, Draft) == 1


async def test_get_returns_the_agent_view_of_its_draft(api: Api) -> None:
    _, created = await submit(api, REFUND)
    response = await api.client.get(f"/v1/drafts/{created['id']}", headers=api.auth())
    assert response.status == 200
    view = await response.json()
    assert view["amount"] == "30.00" and view["currency"] == "USD"
    assert view["status"] == "pending" and view["decisions"] == [] and view["edited"] is False
    assert view["execution"] == {"status": "none", "attempts": 0, "last_error": None}


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer nope"}, 401), ({"Authorization": "Basic abc"}, 401)],
)
async def test_requests_without_a_valid_token_get_401(api: Api, headers: dict[str, str], status: int) -> None:
    response = await api.client.post("/v1/drafts", json=REFUND, headers=headers)
    assert response.status == status
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert count(api, Draft) == 0


async def test_category_not_allowed_for_agent_gets_403(api: Api) -> None:
    response = await api.client.post("/v1/drafts", json=REFUND, headers=api.auth(api.other_token))
    assert response.status == 403
    assert (await response.json())["error"]["field"] == "category"


async def test_unknown_category_gets_422(api: Api) -> None:
    status, body = await submit(api, REFUND | {"category": "wire"})
    assert status == 422 and body["error"]["field"] == "category"


@pytest.mark.parametrize("summary", ["", "   ", "\u200b", "\u200e\u00ad\ufeff"])
async def test_a_summary_with_nothing_visible_gets_422(api: Api, summary: str) -> None:
    status, body = await submit(api, REFUND | {"summary": summary})
    assert status == 422 and body["error"]["field"] == "summary"


@pytest.mark.parametrize(
    "extra",
    [{"status": "approved"}, {"approved_by": "U0ALICE"}, {"id": "d_x"}, {"executed_at": "now"}, {"cap": 1}],
)
async def test_unknown_fields_are_rejected_without_a_write(api: Api, extra: dict[str, Any]) -> None:
    status, body = await submit(api, REFUND | extra)
    assert status == 422
    assert body["error"]["message"] == "unknown field"
    assert body["error"]["field"] == next(iter(extra))
    assert count(api, Draft) == 0


@pytest.mark.parametrize(
    ("amount", "field"),
    [
        (30.0, "amount"),
        (30, "amount"),
        ("NaN", "amount"),
        ("Infinity", "amount"),
        ("-5.00", "amount"),
        ("0", "amount"),
        ("0.00", "amount"),
        ("30.001", "amount"),
        ("1e3", "amount"),
        (" 30.00", "amount"),
        ("9" * 40, "amount"),
        ("30.00\n", "amount"),
        ("30.00\r", "amount"),
    ],
)
async def test_bad_amounts_get_422(api: Api, amount: Any, field: str) -> None:
    status, body = await submit(api, REFUND | {"amount": amount})
    assert status == 422
    assert body["error"]["field"] == field
    assert count(api, Draft) == 0


async def test_currency_other_than_the_category_gets_422(api: Api) -> None:
    status, body = await submit(api, REFUND | {"currency": "EUR"})
    assert status == 422 and body["error"]["field"] == "currency"
    status, body = await submit(api, REFUND | {"currency": "usd"})
    assert status == 422 and body["error"]["field"] == "currency"


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"[1,2",
        b'{"category": NaN}',
        b"\xff\xfe",
        b'{"a": Infinity}',
        b'"just a string"',
        b'{"payload": {"x": 1e400}}',
        b'{"payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=["open", "unclosed", "nan", "not-utf8", "infinity", "string", "overflow", "deep"],
)
async def test_malformed_json_gets_400(api: Api, raw: bytes) -> None:
    response = await api.client.post(
        "/v1/drafts", data=raw, headers=api.auth() | {"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"


async def test_body_over_the_limit_gets_413(api: Api) -> None:
    big = REFUND | {"context": "x" * 300_000}
    status, body = await submit(api, big)
    assert status == 413 and body["error"]["code"] == "too_large"
    assert count(api, Draft) == 0


async def test_every_error_answer_has_code_message_and_field(api: Api) -> None:
    _, created = await submit(api, REFUND)
    auth, json_type = api.auth(), {"Content-Type": "application/json"}
    answers = [
        (400, await api.client.post("/v1/drafts", data=b"{", headers=auth | json_type)),
        (401, await api.client.get("/v1/agents/me")),
        (403, await api.client.post("/v1/drafts", json=REFUND, headers=api.auth(api.other_token))),
        (404, await api.client.get("/v1/drafts/d_nope", headers=auth)),
        (405, await api.client.put("/v1/agents/me", headers=auth)),
        (409, await api.client.post(f"/v1/drafts/{created['id']}/done", json={"ok": True}, headers=auth)),
        (413, await api.client.post("/v1/drafts", json=REFUND | {"body": "x" * 300_000}, headers=auth)),
        (422, await api.client.post("/v1/drafts", json=REFUND | {"amount": "-1"}, headers=auth)),
        (422, await api.client.post("/v1/drafts", json=REFUND | {"status": "approved"}, headers=auth)),
    ]
    for status, response in answers:
        body = await response.json()
        assert response.status == status, (status, body)
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    fields = [(await response.json())["error"]["field"] for _, response in answers]
    assert fields == [None, None, "category", None, None, None, None, "amount", "status"]


async def test_a_body_that_arrives_in_pieces_is_read_whole(api: Api) -> None:
    # A body longer than one TCP segment, or sent slowly, reaches the server in several reads.
    raw = json.dumps(REFUND | {"payload": {"note": "x" * 20_000}}).encode()
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (
        f"POST /v1/drafts HTTP/1.1\r\nHost: {server.host}\r\nAuthorization: Bearer {api.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + raw[:500])
    await writer.drain()
    await asyncio.sleep(0.2)  # the server has read the start and waits for the rest
    writer.write(raw[500:])
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]

    async def pieces() -> AsyncIterator[bytes]:  # chunked transfer encoding, one chunk at a time
        for start in range(0, len(raw), 4096):
            yield raw[start : start + 4096]
            await asyncio.sleep(0.02)

    response = await api.client.post(
        "/v1/drafts",
        data=pieces(),
        headers=api.auth() | {"Content-Type": "application/json", "Idempotency-Key": "in-chunks"},
    )
    assert response.status == 202, await response.text()
    assert count(api, Draft) == 2


async def test_a_chunked_body_over_the_limit_gets_413(api: Api) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 8192
            await asyncio.sleep(0)

    response = await api.client.post(
        "/v1/drafts", data=pieces(), headers=api.auth() | {"Content-Type": "application/json"}
    )
    assert response.status == 413 and (await response.json())["error"]["code"] == "too_large"
    assert count(api, Draft) == 0


@pytest.mark.parametrize("text", ["nul\x00byte", "lone \ud800 surrogate"])
async def test_text_no_database_can_hold_gets_422(api: Api, text: str) -> None:
    raw = json.dumps(REFUND | {"body": text}).encode()
    response = await api.client.post(
        "/v1/drafts", data=raw, headers=api.auth() | {"Content-Type": "application/json"}
    )
    assert response.status == 422
    assert count(api, Draft) == 0


@pytest.mark.parametrize(
    "payload",
    ['{"note": "lone \\ud800 surrogate"}', '{"lone \\udfff key": 1}', '{"a": ' + "[" * 40 + "]" * 40 + "}"],
    ids=["value", "key", "too-deep"],
)
async def test_payload_no_executor_can_take_gets_422(api: Api, payload: str) -> None:
    raw = json.dumps(REFUND)[:-1].encode() + b', "payload": ' + payload.encode() + b"}"
    response = await api.client.post(
        "/v1/drafts", data=raw, headers=api.auth() | {"Content-Type": "application/json"}
    )
    assert response.status == 422
    assert (await response.json())["error"]["field"] == "payload"
    assert count(api, Draft) == 0


async def test_strange_unicode_is_stored_verbatim(api: Api) -> None:
    text = "Ｒｅｆｕｎｄ ✅ — 退款 \u202eevil\u202c 👩‍👩‍👧 <!channel> *bold*"
    _, created = await submit(api, REFUND | {"body": text})
    response = await api.client.get(f"/v1/drafts/{created['id']}", headers=api.auth())
    assert (await response.json())["body"] == text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/cb/x\r\nX-Injected: y",
        "http://127.0.0.1:8080/cb/a b",
        "http://127.0.0.1:8080/cb/\tx",
        "http://127.0.0.1:8080/cb/caf\u00e9",
        "http://127.0.0.1:8080/cb/\x7f",
    ],
    ids=["crlf", "space", "tab", "non-ascii", "del"],
)
async def test_a_callback_url_the_client_would_rewrite_gets_422(api: Api, url: str) -> None:
    status, body = await submit(api, REFUND | {"callback_url": url})
    assert status == 422 and body["error"]["field"] == "callback_url", body
    assert "plain URL" in body["error"]["message"]
    assert count(api, Draft) == 0
    status, _ = await submit(api, REFUND | {"callback_url": "http://127.0.0.1:8080/cb/caf%C3%A9%20x"})
    assert status == 202


async def test_callback_url_outside_registered_prefixes_gets_422(api: Api) -> None:
    status, body = await submit(api, REFUND | {"callback_url": "http://169.254.169.254/latest"})
    assert status == 422 and body["error"]["field"] == "callback_url"
    status, _ = await submit(api, REFUND | {"callback_url": "http://127.0.0.1:8080/hook"})
    assert status == 202


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/../admin",
        "http://127.0.0.1:8080/hooks/../../admin",
        "http://127.0.0.1:8080/%2e%2e/admin",
        "http://127.0.0.1:8080/%2E%2E%2Fadmin",
        "http://127.0.0.1:8080/./hook",
        "http://127.0.0.1:8080/hooks/..%5cadmin",
    ],
)
async def test_callback_url_cannot_leave_its_prefix_with_dot_segments(api: Api, url: str) -> None:
    # The HTTP client resolves dot segments, so "/cb/../admin" would be sent to "/admin".
    status, body = await submit(api, REFUND | {"callback_url": url})
    assert status == 422 and body["error"]["field"] == "callback_url", body
    assert count(api, Draft) == 0


@pytest.mark.parametrize("requested_by", ["alice", "U0BOB\n", "U0BOB\r\n", " U0BOB", "U0BOB\u200b", "u0bob"])
async def test_requested_by_must_be_exactly_a_slack_user_id(api: Api, requested_by: str) -> None:
    # "U0BOB\n" once passed a `$`-anchored check and let Bob approve his own draft.
    status, body = await submit(api, REFUND | {"requested_by": requested_by})
    assert status == 422 and body["error"]["field"] == "requested_by"
    assert count(api, Draft) == 0


@pytest.mark.parametrize("key", ["k-1\n", "k 1", "", "k\u00e9"])
async def test_idempotency_keys_must_be_printable_ascii(api: Api, key: str) -> None:
    status, body = await submit(api, REFUND | {"idempotency_key": key})
    assert status == 422 and body["error"]["field"] == "idempotency_key"
    assert count(api, Draft) == 0


async def test_the_same_key_while_the_first_request_is_in_flight_gets_409(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import intake

    release, write_batch = threading.Event(), intake.write_batch

    def held(*args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return write_batch(*args, **kwargs)

    monkeypatch.setattr(intake, "write_batch", held)
    first = asyncio.create_task(submit(api, REFUND, **{"Idempotency-Key": "k-busy"}))
    await asyncio.sleep(0.2)  # the first request now waits on its (held) write
    status, body = await submit(api, REFUND, **{"Idempotency-Key": "k-busy"})
    assert status == 409 and body["error"]["code"] == "conflict", body
    release.set()
    status, created = await first
    assert status == 202
    # Answered: the same key now replays the stored answer.
    assert await submit(api, REFUND, **{"Idempotency-Key": "k-busy"}) == (202, created)
    assert count(api, Draft) == 1


async def test_an_unexpected_failure_still_answers_the_json_error_shape(api: Api) -> None:
    with api.rt.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO control_state (\"key\", value, updated_at, updated_by) VALUES ('pause:all', '{not json', '2026-11-24 00:00:00', 'test')"
        )
    status, body = await submit(api, REFUND)
    assert status == 500 and body == {
        "error": {
            "code": "internal",
            "message": "unexpected error; the server log has the details",
            "field": None,
        }
    }
    assert count(api, Draft) == 0


async def test_same_key_and_body_returns_the_stored_response(api: Api) -> None:
    first = await submit(api, REFUND, **{"Idempotency-Key": "k-1"})
    second = await submit(api, REFUND, **{"Idempotency-Key": '"k-1"'})
    third = await submit(api, REFUND | {"idempotency_key": "k-1"})
    assert first == second == third
    assert count(api, Draft) == 1


async def test_same_key_with_a_different_body_gets_422_and_changes_nothing(api: Api) -> None:
    _, first = await submit(api, REFUND, **{"Idempotency-Key": "k-2"})
    status, body = await submit(api, REFUND | {"amount": "31.00"}, **{"Idempotency-Key": "k-2"})
    assert status == 422 and body["error"]["code"] == "idempotency_key_reused"
    response = await api.client.get(f"/v1/drafts/{first['id']}", headers=api.auth())
    assert (await response.json())["amount"] == "30.00"
    assert count(api, Draft) == 1


async def test_idempotency_keys_are_scoped_per_agent(api: Api) -> None:
    reply = {"category": "reply", "summary": "Answer", "body": "Thanks, it ships Monday."}
    _, mine = await submit(api, reply, **{"Idempotency-Key": "shared"})
    response = await api.client.post(
        "/v1/drafts", json=reply, headers=api.auth(api.other_token) | {"Idempotency-Key": "shared"}
    )
    theirs = await response.json()
    assert response.status == 202 and theirs["id"] != mine["id"]


async def test_idempotency_key_is_kept_24_hours_then_treated_as_new(api: Api, clock: FrozenClock) -> None:
    _, first = await submit(api, REFUND, **{"Idempotency-Key": "k-3"})
    clock.advance(hours=23)
    _, again = await submit(api, REFUND, **{"Idempotency-Key": "k-3"})
    assert again == first
    clock.advance(hours=1, seconds=1)
    _, later = await submit(api, REFUND, **{"Idempotency-Key": "k-3"})
    assert later["id"] != first["id"]
    assert count(api, IdempotencyRecord) == 1


async def test_header_and_body_keys_that_differ_get_400(api: Api) -> None:
    status, _ = await submit(api, REFUND | {"idempotency_key": "a"}, **{"Idempotency-Key": "b"})
    assert status == 400


async def test_another_agents_draft_is_not_found(api: Api) -> None:
    _, created = await submit(api, REFUND)
    other = api.auth(api.other_token)
    for method, path in [
        ("GET", f"/v1/drafts/{created['id']}"),
        ("DELETE", f"/v1/drafts/{created['id']}"),
        ("POST", f"/v1/drafts/{created['id']}/done"),
    ]:
        response = await api.client.request(method, path, headers=other, json={"ok": True})
        assert response.status == 404, (method, path)
        missing = await api.client.request(
            method, path.replace(created["id"], "d_missing"), headers=other, json={"ok": True}
        )
        assert await response.json() == await missing.json()
    view = await (await api.client.get(f"/v1/drafts/{created['id']}", headers=api.auth())).json()
    assert view["status"] == "pending"


async def test_delete_withdraws_a_pending_draft_once(api: Api) -> None:
    _, created = await submit(api, REFUND)
    response = await api.client.delete(f"/v1/drafts/{created['id']}", headers=api.auth())
    assert response.status == 200 and (await response.json())["status"] == "cancelled"
    again = await api.client.delete(f"/v1/drafts/{created['id']}", headers=api.auth())
    assert again.status == 409


async def test_done_on_a_pending_draft_gets_409(api: Api) -> None:
    _, created = await submit(api, {"category": "reply", "summary": "s", "body": "b"})
    response = await api.client.post(
        f"/v1/drafts/{created['id']}/done", json={"ok": True}, headers=api.auth()
    )
    assert response.status == 409


async def test_done_in_a_category_with_an_executor_gets_409(api: Api) -> None:
    _, created = await submit(api, REFUND)
    response = await api.client.post(
        f"/v1/drafts/{created['id']}/done", json={"ok": True}, headers=api.auth()
    )
    assert response.status == 409


async def test_done_rejects_unknown_fields(api: Api) -> None:
    _, created = await submit(api, {"category": "reply", "summary": "s", "body": "b"})
    response = await api.client.post(
        f"/v1/drafts/{created['id']}/done", json={"ok": True, "status": "executed"}, headers=api.auth()
    )
    assert response.status == 422


async def test_wait_must_be_between_0_and_30_seconds(api: Api) -> None:
    _, created = await submit(api, REFUND)
    for wait in ("-1", "31", "soon"):
        response = await api.client.get(f"/v1/drafts/{created['id']}?wait={wait}", headers=api.auth())
        assert response.status == 400


async def test_wait_returns_when_the_draft_leaves_pending(api: Api) -> None:
    import asyncio

    _, created = await submit(api, REFUND)

    async def withdraw_soon() -> None:
        await asyncio.sleep(0.3)
        await api.client.delete(f"/v1/drafts/{created['id']}", headers=api.auth())

    task = asyncio.create_task(withdraw_soon())
    response = await api.client.get(f"/v1/drafts/{created['id']}?wait=10", headers=api.auth())
    await task
    assert (await response.json())["status"] == "cancelled"


async def test_me_reports_state_modes_and_caps(api: Api) -> None:
    response = await api.client.get("/v1/agents/me", headers=api.auth())
    me = await response.json()
    assert me["name"] == "support-bot" and me["state"] == "active" and me["reason"] is None
    assert me["categories"]["refund"] == {
        "mode": "review",
        "count_cap": 20,
        "count_used": 0,
        "amount_cap": "500.00",
        "amount_used": "0.00",
        "currency": "USD",
    }


async def test_heartbeat_answers_ok(api: Api) -> None:
    response = await api.client.post("/v1/heartbeat", headers=api.auth())
    assert response.status == 200 and (await response.json())["ok"] is True


async def test_over_the_rate_limit_gets_429_with_retry_after(api: Api) -> None:
    from handlers.agent_api import LIMITER

    limiter = api.client.app[LIMITER]
    limiter.capacity, limiter.per_seconds = 5, 60.0
    statuses = []
    for _ in range(6):
        response = await api.client.get("/v1/agents/me", headers=api.auth())
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert (await response.json())["error"]["code"] == "rate_limited"
    assert statuses == [200] * 5 + [429]
    other = await api.client.get("/v1/agents/me", headers=api.auth(api.other_token))
    assert other.status == 200


async def test_every_submission_is_audited_in_a_valid_chain(api: Api) -> None:
    for n in range(3):
        await submit(api, REFUND | {"summary": f"refund {n}"})
    result = audit.verify(api.rt.engine)
    assert result.ok and result.rows == 2 + 3  # two agents added, three drafts


async def test_unknown_route_and_healthz(api: Api) -> None:
    missing = await api.client.get("/v1/nothing", headers=api.auth())
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"
    wrong = await api.client.put("/v1/drafts", headers=api.auth())
    assert wrong.status == 405 and (await wrong.json())["error"]["code"] == "method_not_allowed"
    assert (await api.client.get("/healthz")).status == 200
    ready = await api.client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ok"] is True


async def test_readyz_asks_alembic_until_the_schema_is_current_then_only_pings(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bool] = []

    def is_current(engine: object) -> bool:
        asked.append(bool(asked))  # pending the first time, current from then on
        return asked[-1]

    monkeypatch.setattr(migrate, "is_current", is_current)
    statuses = [(await api.client.get("/readyz")).status for _ in range(4)]
    assert statuses == [503, 200, 200, 200]
    assert asked == [False, True]
