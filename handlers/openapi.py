"""The OpenAPI 3.1 description of the agent API; a test validates real responses against it."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
# Positive, at most two decimals (every configured currency's minor unit; the API rechecks per currency).
_AMOUNT = {
    "type": "string",
    "pattern": r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,14}(\.[0-9]{1,2})?)$",
    "examples": ["30.00"],
}
# What responses carry: any non-negative decimal (usage can be 0.00; currencies differ in decimals).
_MONEY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}
# Text holds no NUL: no database stores it faithfully (the API answers 422).
_NO_NUL = "^[^\\x00]*$"
_FINDING = {
    "type": "object",
    "required": ["code", "severity", "message"],
    "properties": {"code": _STR, "severity": {"enum": ["low", "medium", "high"]}, "message": _STR},
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "additionalProperties": False,
            "properties": {"code": _STR, "message": _STR, "field": {"type": ["string", "null"]}},
        }
    },
}
_DRAFT_IN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["category", "summary", "body"],
    "properties": {
        "category": {"type": "string", "minLength": 1, "maxLength": 40},
        "summary": {"type": "string", "minLength": 1, "maxLength": 300, "pattern": "^[^\\x00]*\\S[^\\x00]*$"},
        "body": {"type": "string", "maxLength": 40000, "pattern": _NO_NUL},
        "context": {"type": ["string", "null"], "maxLength": 40000, "pattern": _NO_NUL},
        "amount": {"anyOf": [_AMOUNT, {"type": "null"}]},
        "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"},
        "payload": {"type": ["object", "null"]},
        "callback_url": {"type": ["string", "null"], "maxLength": 2000, "pattern": "^[\\x21-\\x7e]+$"},
        "requested_by": {"type": ["string", "null"], "pattern": "^[UW][A-Z0-9]{2,20}$"},
        "idempotency_key": {"type": ["string", "null"], "pattern": "^[\\x21-\\x7e]{1,255}$"},
    },
    # A currency names the amount's currency: without an amount it is refused.
    "if": {"required": ["currency"], "properties": {"currency": {"type": "string"}}},
    "then": {"required": ["amount"], "properties": {"amount": {"type": "string"}}},
}
_SUBMITTED = {
    "type": "object",
    "required": ["id", "status", "url"],
    "additionalProperties": False,
    "properties": {
        "id": _STR,
        "status": {"enum": ["pending", "manual"]},
        "reason": {"enum": ["agent_paused", "category_manual", "over_cap", "agent_offline"]},
        "url": _STR,
    },
}
_DRAFT = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "id",
        "status",
        "reason",
        "category",
        "summary",
        "body",
        "context",
        "approved_body",
        "edited",
        "amount",
        "currency",
        "risk",
        "decisions",
        "execution",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "id": _STR,
        "status": {
            "enum": [
                "pending",
                "manual",
                "approved",
                "rejected",
                "expired",
                "cancelled",
                "executed",
                "failed",
                "needs_reconciliation",
                "handled",
            ]
        },
        "reason": _NSTR,
        "category": _STR,
        "summary": _STR,
        "body": _STR,
        "context": _NSTR,
        "approved_body": _NSTR,
        "edited": {"type": "boolean"},
        "amount": {"anyOf": [_MONEY, {"type": "null"}]},
        "currency": _NSTR,
        "risk": {
            "type": "object",
            "required": ["level", "findings"],
            "properties": {
                "level": {"enum": ["none", "low", "medium", "high"]},
                "findings": {"type": "array", "items": _FINDING},
            },
        },
        "decisions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["action", "by", "reason", "at"],
                "properties": {
                    "action": {"enum": ["approve", "edit", "reject"]},
                    "by": _STR,
                    "reason": _NSTR,
                    "at": {"type": "string", "format": "date-time"},
                },
            },
        },
        "execution": {
            "type": "object",
            "required": ["status", "attempts", "last_error"],
            "properties": {
                "status": {"enum": ["none", "pending", "succeeded", "failed", "needs_reconciliation"]},
                "attempts": {"type": "integer", "minimum": 0},
                "last_error": _NSTR,
            },
        },
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}
_ME = {
    "type": "object",
    "required": ["name", "state", "reason", "categories"],
    "additionalProperties": False,
    "properties": {
        "name": _STR,
        "state": {"enum": ["active", "paused"]},
        "reason": _NSTR,
        "categories": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["mode", "count_cap", "count_used", "amount_cap", "amount_used", "currency"],
                "properties": {
                    "mode": {"enum": ["review", "manual"]},
                    "count_cap": {"type": ["integer", "null"]},
                    "count_used": {"type": "integer"},
                    "amount_cap": {"anyOf": [_MONEY, {"type": "null"}]},
                    "amount_used": _MONEY,
                    "currency": _STR,
                },
            },
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request",
        401: "Missing or unknown agent token",
        403: "Category not allowed for this agent",
        404: "No such draft, or not this agent's",
        409: "Conflict with the draft's state, or the same Idempotency-Key is in flight",
        413: "Body too large",
        422: "Valid JSON with invalid values",
        429: "Over the agent's request rate",
        503: "Control state unreadable: fail closed",
    }
    return {str(code): _json("Error", text[code]) for code in codes}


_DRAFT_ID = {"name": "draft_id", "in": "path", "required": True, "schema": {"type": "string"}}
_COMMON = (400, 401, 429, 503)


@cache
def spec(
    categories: tuple[str, ...] = (),
    currencies: tuple[str, ...] = (),
    callback_prefixes: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The document served at /v1/openapi.json, with this deployment's categories and currencies."""
    draft_in = json.loads(json.dumps(_DRAFT_IN))
    if categories:
        draft_in["properties"]["category"] = {"enum": list(categories)}
    if currencies:
        draft_in["properties"]["currency"] = {"enum": [*currencies, None]}
    if callback_prefixes is not None:
        # Asked with an agent's token: callback_url is only what the operator registered for it.
        if callback_prefixes:
            alternatives = "|".join(re.escape(prefix) for prefix in callback_prefixes)
            draft_in["properties"]["callback_url"] = {
                "type": ["string", "null"],
                "maxLength": 2000,
                "pattern": f"^({alternatives})[\\x21-\\x7e]*$",  # printable ASCII, no space
            }
        else:
            draft_in["properties"]["callback_url"] = {"type": "null"}  # no prefix registered: only null
    return {
        "openapi": "3.1.0",
        "info": {"title": "Countersign agent API", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _ERROR,
                "DraftIn": draft_in,
                "Submitted": _SUBMITTED,
                "Draft": _DRAFT,
                "Me": _ME,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/drafts": {
                "post": {
                    "operationId": "submitDraft",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            # Printable ASCII; the IETF draft's quoted form ("key") is accepted too.
                            "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("DraftIn")}},
                    },
                    "responses": {"202": _json("Submitted", "Stored: pending review, or routed to humans")}
                    | _errors(*_COMMON, 403, 409, 413, 422),
                }
            },
            "/v1/drafts/{draft_id}": {
                "get": {
                    "operationId": "getDraft",
                    "parameters": [
                        _DRAFT_ID,
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": 30},
                        },
                    ],
                    "responses": {"200": _json("Draft", "The draft")} | _errors(*_COMMON, 404),
                },
                "delete": {
                    "operationId": "cancelDraft",
                    "parameters": [_DRAFT_ID],
                    "responses": {"200": _json("Draft", "Withdrawn")} | _errors(*_COMMON, 404, 409),
                },
            },
            "/v1/drafts/{draft_id}/done": {
                "post": {
                    "operationId": "reportDone",
                    "parameters": [_DRAFT_ID],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["ok"],
                                    "properties": {
                                        "ok": {"type": "boolean"},
                                        "detail": {"type": ["string", "null"], "pattern": _NO_NUL},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"200": _json("Draft", "Recorded")} | _errors(*_COMMON, 404, 409, 413, 422),
                }
            },
            "/v1/agents/me": {
                "get": {
                    "operationId": "me",
                    "responses": {"200": _json("Me", "This agent today")} | _errors(*_COMMON),
                }
            },
            "/v1/heartbeat": {
                "post": {
                    "operationId": "heartbeat",
                    "responses": {
                        "200": {
                            "description": "Alive",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["ok", "at"],
                                        "properties": {"ok": {"type": "boolean"}, "at": _STR},
                                    }
                                }
                            },
                        }
                    }
                    | _errors(*_COMMON),
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {
                        "200": {"description": "This document", "content": {"application/json": {}}}
                    },
                }
            },
        },
    }
