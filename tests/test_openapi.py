from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from bot import agents
from bot.app import Options, create_app
from bot.settings import load_settings
from handlers.agent_api import RUNTIME
from storage import queries
from storage.db import transaction
from tests.conftest import Api, FrozenClock, make_env, write_config

SPEC_URI = "urn:countersign:openapi"
DRAFT = "/v1/drafts/{draft_id}"
DONE = "/v1/drafts/{draft_id}/done"
REFUND = {
    "category": "refund",
    "summary": "Refund order 1042",
    "body": "Hi Dana, I've issued a refund of $30.00 to your card.",
    "context": "My order 1042 arrived broken, can I get a refund?",
    "amount": "30.00",
}
REPLY = {"category": "reply", "summary": "Answer order 1042", "body": "Hi Dana, it ships on Monday."}

FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return "T" in value and datetime.fromisoformat(value).tzinfo is not None


async def fetch_spec(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/v1/openapi.json")
    assert response.status == 200
    spec: dict[str, Any] = await response.json()
    return spec


def pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def validator_for(spec: dict[str, Any], *parts: str) -> Draft202012Validator:
    registry = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec))
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#/{pointer(*parts)}"}, registry=registry, format_checker=FORMATS
    )


async def conforms(spec: dict[str, Any], response: ClientResponse, path: str, method: str) -> Any:
    declared = spec["paths"][path][method]["responses"]
    status = str(response.status)
    assert status in declared, f"{method.upper()} {path} answered {status}, which the spec does not declare"
    assert response.content_type == "application/json"
    body = await response.json()
    schema_at = ("paths", path, method, "responses", status, "content", "application/json", "schema")
    validator_for(spec, *schema_at).validate(body)
    return body


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


async def test_openapi_is_version_3_1_and_describes_exactly_the_routes_served(api: Api) -> None:
    spec = await fetch_spec(api.client)
    assert spec["openapi"].startswith("3.1.")
    routed = {
        (route.resource.canonical, route.method.lower())
        for route in api.client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"
    }
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert routed == described
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    registry = Registry().with_resource(SPEC_URI, DRAFT202012.create_resource(spec))
    resolver = registry.resolver(base_uri=SPEC_URI)
    for ref in set(refs(spec)):
        resolver.lookup(ref)


async def test_openapi_declares_a_json_schema_for_every_json_response(api: Api) -> None:
    spec = await fetch_spec(api.client)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                if path == "/v1/openapi.json":
                    continue
                schema = response["content"]["application/json"]["schema"]
                Draft202012Validator.check_schema(schema)
                assert status.isdigit(), (path, method, status)


async def post(api: Api, body: Any, token: str | None = None, **headers: str) -> ClientResponse:
    return await api.client.post("/v1/drafts", json=body, headers=api.auth(token) | headers)


async def test_success_responses_match_the_spec(api: Api) -> None:
    spec = await fetch_spec(api.client)
    request_schema = validator_for(spec, "components", "schemas", "DraftIn")
    request_schema.validate(REFUND)
    submitted = await conforms(spec, await post(api, REFUND), "/v1/drafts", "post")
    assert submitted["status"] == "pending"
    draft_id = submitted["id"]
    view = await conforms(
        spec, await api.client.get(f"/v1/drafts/{draft_id}", headers=api.auth()), DRAFT, "get"
    )
    assert view["id"] == draft_id and view["amount"] == "30.00"
    waited = await api.client.get(f"/v1/drafts/{draft_id}?wait=0", headers=api.auth())
    assert (await conforms(spec, waited, DRAFT, "get"))["status"] == "pending"
    cancelled = await api.client.delete(f"/v1/drafts/{draft_id}", headers=api.auth())
    assert (await conforms(spec, cancelled, DRAFT, "delete"))["status"] == "cancelled"
    me = await conforms(
        spec, await api.client.get("/v1/agents/me", headers=api.auth()), "/v1/agents/me", "get"
    )
    assert me["name"] == "support-bot" and set(me["categories"]) == {"refund", "reply"}
    beat = await conforms(
        spec, await api.client.post("/v1/heartbeat", headers=api.auth()), "/v1/heartbeat", "post"
    )
    assert beat["ok"] is True


async def test_manual_submission_matches_the_spec(api: Api) -> None:
    spec = await fetch_spec(api.client)
    with transaction(api.rt.engine) as session:
        queries.set_control(session, "mode:reply", {"mode": "manual"}, by="U0ADMIN", at=api.rt.clock())
    body = await conforms(spec, await post(api, REPLY), "/v1/drafts", "post")
    assert (body["status"], body["reason"]) == ("manual", "category_manual")


async def test_done_responses_match_the_spec(api: Api) -> None:
    spec = await fetch_spec(api.client)
    draft_id = (await (await post(api, REPLY)).json())["id"]
    early = await api.client.post(f"/v1/drafts/{draft_id}/done", json={"ok": True}, headers=api.auth())
    assert (await conforms(spec, early, DONE, "post"))["error"]["code"] == "conflict"
    with transaction(api.rt.engine) as session:
        assert queries.transition(
            session, draft_id, from_=("pending",), to="approved", approved_body=REPLY["body"]
        )
    done = await api.client.post(
        f"/v1/drafts/{draft_id}/done", json={"ok": True, "detail": "sent"}, headers=api.auth()
    )
    view = await conforms(spec, done, DONE, "post")
    assert (view["status"], view["execution"]["status"]) == ("executed", "succeeded")


Scenario = Callable[[Api, str], Awaitable[ClientResponse]]


async def _cancel_twice(api: Api, draft_id: str) -> ClientResponse:
    await api.client.delete(f"/v1/drafts/{draft_id}", headers=api.auth())
    return await api.client.delete(f"/v1/drafts/{draft_id}", headers=api.auth())


async def _reuse_key(api: Api, draft_id: str) -> ClientResponse:
    await post(api, REFUND, **{"Idempotency-Key": "k-1"})
    return await post(api, REFUND | {"amount": "31.00"}, **{"Idempotency-Key": "k-1"})


def _raw(path: str, data: bytes, headers: dict[str, str] | None = None) -> Scenario:
    async def send(api: Api, draft_id: str) -> ClientResponse:
        return await api.client.post(
            path.format(draft_id=draft_id),
            data=data,
            headers=(api.auth() if headers is None else headers) | {"Content-Type": "application/json"},
        )

    return send


def _call(method: str, path: str, who: str | None = "me", body: Any = None) -> Scenario:
    async def send(api: Api, draft_id: str) -> ClientResponse:
        tokens = {"me": api.token, "other": api.other_token, "bad": "cs_not_a_token"}
        headers = {} if who is None else api.auth(tokens[who])
        return await api.client.request(method, path.format(draft_id=draft_id), json=body, headers=headers)

    return send


ERRORS: list[tuple[int, str, str, Scenario]] = [
    (400, "/v1/drafts", "post", _raw("/v1/drafts", b'{"category": ')),
    (400, "/v1/drafts", "post", _raw("/v1/drafts", b"[1, 2]")),
    (400, DRAFT, "get", _call("GET", "/v1/drafts/{draft_id}?wait=soon")),
    (400, DONE, "post", _raw("/v1/drafts/{draft_id}/done", b"{nope")),
    (401, "/v1/drafts", "post", _call("POST", "/v1/drafts", who=None, body=REFUND)),
    (401, DRAFT, "get", _call("GET", "/v1/drafts/{draft_id}", who="bad")),
    (401, DRAFT, "delete", _call("DELETE", "/v1/drafts/{draft_id}", who=None)),
    (401, DONE, "post", _call("POST", "/v1/drafts/{draft_id}/done", who=None, body={"ok": True})),
    (401, "/v1/agents/me", "get", _call("GET", "/v1/agents/me", who="bad")),
    (401, "/v1/heartbeat", "post", _call("POST", "/v1/heartbeat", who=None)),
    (403, "/v1/drafts", "post", _call("POST", "/v1/drafts", who="other", body=REFUND)),
    (404, DRAFT, "get", _call("GET", "/v1/drafts/d_doesnotexist")),
    (404, DRAFT, "get", _call("GET", "/v1/drafts/{draft_id}", who="other")),
    (404, DRAFT, "delete", _call("DELETE", "/v1/drafts/{draft_id}", who="other")),
    (404, DONE, "post", _call("POST", "/v1/drafts/{draft_id}/done", who="other", body={"ok": True})),
    (409, DRAFT, "delete", _cancel_twice),
    (409, DONE, "post", _call("POST", "/v1/drafts/{draft_id}/done", body={"ok": True})),
    (413, "/v1/drafts", "post", _call("POST", "/v1/drafts", body=REFUND | {"context": "x" * 300_000})),
    (
        413,
        DONE,
        "post",
        _call("POST", "/v1/drafts/{draft_id}/done", body={"ok": False, "detail": "x" * 300_000}),
    ),
    (422, "/v1/drafts", "post", _call("POST", "/v1/drafts", body=REFUND | {"status": "approved"})),
    (422, "/v1/drafts", "post", _call("POST", "/v1/drafts", body=REFUND | {"amount": 30.0})),
    (422, "/v1/drafts", "post", _call("POST", "/v1/drafts", body={"category": "refund"})),
    (422, "/v1/drafts", "post", _reuse_key),
    (422, DONE, "post", _call("POST", "/v1/drafts/{draft_id}/done", body={"ok": "yes"})),
]


@pytest.mark.parametrize(
    ("status", "path", "method", "scenario"),
    ERRORS,
    ids=[f"{status}-{method}-{n}" for n, (status, _, method, _) in enumerate(ERRORS)],
)
async def test_error_responses_match_the_spec(
    api: Api, status: int, path: str, method: str, scenario: Scenario
) -> None:
    spec = await fetch_spec(api.client)
    draft_id = (await (await post(api, REFUND)).json())["id"]
    response = await scenario(api, draft_id)
    assert response.status == status, await response.text()
    body = await conforms(spec, response, path, method)
    assert body["error"]["message"]


@pytest.fixture
async def limited(db_url: str, tmp_path: Path, clock: FrozenClock) -> AsyncIterator[Api]:
    settings = load_settings(make_env(db_url, write_config(tmp_path, rate="2/m")))
    app = create_app(settings, Options(clock=clock, run_workers=False))
    rt = app[RUNTIME]
    token = agents.add(rt, name="support-bot", categories=["reply"], callback_prefixes=[]).token
    async with TestClient(TestServer(app)) as client:
        yield Api(client=client, token=token, other_token=token, rt=rt)


async def test_rate_limited_responses_match_the_spec_and_say_when_to_retry(limited: Api) -> None:
    spec = await fetch_spec(limited.client)
    for _ in range(2):
        beat = await limited.client.post("/v1/heartbeat", headers=limited.auth())
        assert beat.status == 200
    for path, method, response in [
        ("/v1/heartbeat", "post", await limited.client.post("/v1/heartbeat", headers=limited.auth())),
        ("/v1/drafts", "post", await post(limited, REPLY)),
        ("/v1/agents/me", "get", await limited.client.get("/v1/agents/me", headers=limited.auth())),
        (DRAFT, "get", await limited.client.get("/v1/drafts/d_x", headers=limited.auth())),
    ]:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await conforms(spec, response, path, method))["error"]["code"] == "rate_limited"


async def test_conformance_check_fails_when_a_status_is_not_declared(api: Api) -> None:
    spec = json.loads(json.dumps(await fetch_spec(api.client)))
    del spec["paths"]["/v1/heartbeat"]["post"]["responses"]["200"]
    response = await api.client.post("/v1/heartbeat", headers=api.auth())
    with pytest.raises(AssertionError, match="does not declare"):
        await conforms(spec, response, "/v1/heartbeat", "post")


async def _spec_as(api: Api, authorization: str | None) -> dict[str, Any]:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await api.client.get("/v1/openapi.json", headers=headers)
    assert response.status == 200
    spec: dict[str, Any] = await response.json()
    return spec


async def test_an_agents_spec_allows_only_its_callback_prefixes(api: Api) -> None:
    prefixed = await _spec_as(api, f"Bearer {api.token}")
    draft_in = validator_for(prefixed, "components", "schemas", "DraftIn")
    body = {"category": "refund", "summary": "s", "body": "b"}
    assert draft_in.is_valid(body | {"callback_url": "http://127.0.0.1:8080/hook"})
    assert not draft_in.is_valid(body | {"callback_url": "http://127.0.0.2:8080/hook"})
    # An agent without prefixes may send callback_url only as null, which the server accepts.
    bare = validator_for(await _spec_as(api, f"Bearer {api.other_token}"), "components", "schemas", "DraftIn")
    assert bare.is_valid(body | {"callback_url": None})
    assert not bare.is_valid(body | {"callback_url": "http://127.0.0.1:8080/hook"})


@pytest.mark.parametrize("authorization", ["Bearer wrong", "Basic abc", "Bearer "])
async def test_a_bad_token_gets_the_generic_spec_not_401(api: Api, authorization: str) -> None:
    assert await _spec_as(api, authorization) == await _spec_as(api, None)


async def test_the_spec_says_a_currency_needs_an_amount(api: Api) -> None:
    draft_in = validator_for(await fetch_spec(api.client), "components", "schemas", "DraftIn")
    body = {"category": "refund", "summary": "s", "body": "b"}
    assert not draft_in.is_valid(body | {"currency": "USD"})
    assert not draft_in.is_valid(body | {"currency": "USD", "amount": None})
    assert draft_in.is_valid(body | {"currency": "USD", "amount": "30.00"})
    assert draft_in.is_valid(body | {"currency": None})
    response = await api.client.post("/v1/drafts", json=body | {"currency": "USD"}, headers=api.auth())
    assert response.status == 422
