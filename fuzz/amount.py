"""Target `amount`: a POST /v1/drafts body through JSON decoding, DraftIn and intake.prepare.

Input: the request body. It is decoded exactly as the API decodes it (UTF-8, no NaN/Infinity,
finite floats), validated by DraftIn, then checked against a config with USD, JPY and KWD
categories by intake.prepare (amount parsing, currency, callback prefix, risk rules). Allowed
refusals: the decoding errors the API turns into 400, ValidationError (422) and CountersignError.
The same text also goes straight to policy.parse_api_amount, which may raise ValueError only.
An accepted amount is positive, has no more decimals than its currency has minor digits, and
survives the trip through integer minor units.
"""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cache

from pydantic import ValidationError

from bot import intake, policy
from bot.errors import CountersignError
from bot.runtime import Runtime
from bot.schemas import DraftIn
from bot.settings import currency_exponent
from fuzz.config import settings
from handlers.agent_api import _json_constant, _json_float
from storage.db import create_db_engine
from storage.tables import Agent

RISK_LEVELS = frozenset({"none", "low", "medium", "high"})


@cache
def runtime() -> Runtime:
    # prepare() reads only the config; the engine is never connected.
    return Runtime(engine=create_db_engine(settings().database_url), config=settings().config)


@cache
def agent() -> Agent:
    return Agent(
        id=1,
        name="support-bot",
        categories="refund,credit,payout",
        callback_prefixes='["https://hooks.example.com/countersign/"]',
        callback_secret="whsec_AAAA",  # noqa: S106
    )


def _check_amount(value: Decimal, text: str, exponent: int) -> None:
    assert value.is_finite() and value > 0, text
    assert -value.as_tuple().exponent <= exponent, (text, exponent)  # type: ignore[operator]
    assert policy.from_minor(policy.to_minor(value, exponent), exponent) == value, (text, exponent)


def _api(data: bytes) -> None:
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_json_constant, parse_float=_json_float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return  # 400 malformed JSON
    if not isinstance(body, dict):
        return  # 400
    try:
        draft = DraftIn.model_validate(body)
    except ValidationError:
        return  # 422
    try:
        prepared = intake.prepare(runtime(), agent=agent(), draft=draft, key=None, base_url="http://x")
    except CountersignError:
        return
    assert prepared.risk["level"] in RISK_LEVELS
    if prepared.amount is not None:
        assert draft.amount is not None and prepared.currency == prepared.category.currency
        _check_amount(prepared.amount, draft.amount, currency_exponent(prepared.currency))


def one_input(data: bytes) -> None:
    _api(data)
    text = data.decode("utf-8", "replace")
    for exponent in (0, 2, 3):
        try:
            value = policy.parse_api_amount(text, exponent)
        except ValueError:
            continue
        _check_amount(value, text, exponent)
