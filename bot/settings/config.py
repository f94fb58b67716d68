"""The TOML config file: the records it holds (categories, agents, ...) and the reading of it, section by
section, into them."""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar
from zoneinfo import ZoneInfo

from bot import netguard
from bot.risk.workers import MAX_WORKERS as MAX_RISK_WORKERS
from bot.settings.reader import ConfigError, Fields, Problem, Reader, kind_name
from bot.settings.values import (
    RateLimit,
    channel_id,
    group_id,
    parse_clock,
    parse_currency,
    parse_domain,
    parse_duration,
    parse_phrase,
    parse_rate,
    parse_zone,
    user_id,
)

_T = TypeVar("_T")


_SLUG = re.compile(r"[a-z][a-z0-9_-]{0,39}")


_TOP_KEYS: tuple[str, ...] = (
    "timezone",
    "admins",
    "agent_rate_limit",
    "alerts_channel",
    "max_body_bytes",
    "risk_workers",
)
_TOP_KEYS += ("digest", "defaults", "categories", "agents", "watchdog", "ai_review")
_CATEGORY_KEYS: tuple[str, ...] = ("channel", "manual_channel", "reviewers", "reviewer_group", "currency")
_CATEGORY_KEYS += ("daily_count_cap", "daily_amount_cap", "two_person_above", "max_amount", "expire_after")
_CATEGORY_KEYS += ("executor", "allowed_link_domains", "forbidden_phrases", "policy", "ai_review", "money")
_CATEGORY_KEYS += ("mode",)
MODES = ("review", "manual")
_AGENT_KEYS: tuple[str, ...] = ("heartbeat_timeout", "breaker_window", "breaker_reject_ratio")
_AGENT_KEYS += ("breaker_burst", "daily_count_cap", "daily_amount_cap")


@dataclass(frozen=True)
class Executor:
    url: str
    secret_env: str
    secret: str = field(repr=False)  # kept out of repr so it never lands in a log line


@dataclass(frozen=True)
class Category:
    name: str
    channel: str
    manual_channel: str | None
    reviewers: frozenset[str]
    reviewer_group: str | None
    daily_count_cap: int | None
    daily_amount_cap: Decimal | None
    currency: str
    two_person_above: Decimal | None
    max_amount: Decimal | None
    expire_after: timedelta
    executor: Executor | None
    allowed_link_domains: tuple[str, ...]
    forbidden_phrases: tuple[str, ...]
    policy: str
    ai_review: bool
    money: bool
    # "manual": the category's work always goes to humans while the config says so (the server
    # keeps a switch in the database to match, bot/control/switches.py apply_config_modes).
    mode: str = "review"


@dataclass(frozen=True)
class AgentPolicy:
    heartbeat_timeout: timedelta | None = None
    breaker_window: int = 20
    breaker_reject_ratio: Decimal = Decimal("0.30")
    breaker_burst_count: int = 3
    breaker_burst_window: timedelta = timedelta(minutes=10)
    daily_count_cap: int | None = None
    daily_amount_cap: Decimal | None = None


_DEFAULT_RATE = RateLimit(50, timedelta(seconds=1))


@dataclass(frozen=True)
class Config:
    path: Path
    timezone: ZoneInfo
    admins: frozenset[str]
    agent_rate_limit: RateLimit
    alerts_channel: str | None
    digest_channel: str | None
    digest_at: datetime.time
    categories: Mapping[str, Category]
    agents: Mapping[str, AgentPolicy]
    default_agent_policy: AgentPolicy
    watchdog_max_pending: int | None
    watchdog_max_age: timedelta | None
    reviewer_model: str
    reviewer_timeout: timedelta
    max_body_bytes: int
    risk_workers: int = 0  # processes that run the risk rules (bot/risk/workers.py); 0: in-process

    def agent_policy(self, name: str) -> AgentPolicy:
        """The agent's own [agents.NAME] tuning, or the defaults when it has none."""
        return self.agents.get(name, self.default_agent_policy)


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _executor(r: Reader, fields: Fields) -> Executor | None:
    if "executor" not in fields:
        return None
    table, key = fields["executor"]
    ex = r.fields(table, key, ("url", "secret_env"))
    for required in ("url", "secret_env"):
        if isinstance(table, dict) and required not in ex:
            r.add(f"{key}.{required}", "required")
    url, env_name = r.typed(ex, "url", str), r.typed(ex, "secret_env", str)
    if url is not None:
        r._apply(netguard.check_url, url, f"{key}.url")
    if env_name is None:
        return None
    secret = r.env.get(env_name, "")
    if not secret.strip():
        r.add(f"{key}.secret_env", f"environment variable {env_name} is not set")
    elif not all(_is_webhook_secret(one) for one in secret.split()):
        # Several, space-separated, during a rotation: each delivery is signed with every one.
        r.add(f"{key}.secret_env", f"{env_name} is not a Standard Webhooks secret (whsec_ then base64)")
    return Executor(url=url or "", secret_env=env_name, secret=secret)


def _is_webhook_secret(secret: str) -> bool:
    try:
        return secret.startswith("whsec_") and bool(base64.b64decode(secret[6:], validate=True))
    except (binascii.Error, ValueError):
        return False


def _category(r: Reader, name: str, key: str, f: Fields) -> Category:
    if "channel" not in f:
        r.add(f"{key}.channel", "required: the Slack channel id (C…) where drafts are posted")
    reviewers = frozenset(_or(r.listed(f, "reviewers", user_id), []))
    group = r.parsed(f, "reviewer_group", group_id)
    if "reviewer_group" not in f and not f.get("reviewers", ([], ""))[0]:
        r.add(f"{key}.reviewers", 'required: set reviewers = ["U…"] or reviewer_group = "S…"')
    currency = r.parsed(f, "currency", parse_currency) or "USD"
    two_person_above = r.amount(f, "two_person_above", currency)
    listed = f.get("reviewers", ([], ""))[0]
    if two_person_above is not None and group is None and isinstance(listed, list) and len(listed) < 2:
        r.add(f["two_person_above"][1], "two-person rule needs two or more reviewers or a reviewer_group")
    money = r.typed(f, "money", bool)
    return Category(
        name=name,
        channel=_or(r.parsed(f, "channel", channel_id), ""),
        manual_channel=r.parsed(f, "manual_channel", channel_id),
        reviewers=reviewers,
        reviewer_group=group,
        daily_count_cap=r.count(f, "daily_count_cap"),
        daily_amount_cap=r.amount(f, "daily_amount_cap", currency),
        currency=currency,
        two_person_above=two_person_above,
        max_amount=r.amount(f, "max_amount", currency),
        expire_after=_or(r.parsed(f, "expire_after", parse_duration), timedelta(hours=24)),
        executor=_executor(r, f),
        allowed_link_domains=tuple(_or(r.listed(f, "allowed_link_domains", parse_domain), [])),
        forbidden_phrases=tuple(_or(r.listed(f, "forbidden_phrases", parse_phrase), [])),
        policy=_or(r.typed(f, "policy", str), ""),
        ai_review=_or(r.typed(f, "ai_review", bool), True),
        money=_or(money, any(k in f for k in ("daily_amount_cap", "two_person_above", "max_amount"))),
        mode=_or(r.parsed(f, "mode", _mode), "review"),
    )


def _mode(text: str) -> str:
    if text not in MODES:
        raise ValueError(f'must be "review" or "manual", got {text!r}')
    return text


def _agent(r: Reader, f: Fields) -> AgentPolicy:
    default = AgentPolicy()
    ratio: Decimal | None = None
    if "breaker_reject_ratio" in f:
        value, key = f["breaker_reject_ratio"]
        # A ratio is not money, so a TOML float is fine here; str() keeps 0.3 as Decimal("0.3").
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            with contextlib.suppress(InvalidOperation):
                ratio = Decimal(str(value))
        if ratio is None or not 0 < ratio <= 1:
            r.add(key, f'must be a ratio above 0 and at most 1, e.g. "0.30", got {value!r}')
            ratio = None
    burst = r.parsed(f, "breaker_burst", parse_rate)
    return AgentPolicy(
        heartbeat_timeout=r.parsed(f, "heartbeat_timeout", parse_duration),
        breaker_window=_or(r.count(f, "breaker_window"), default.breaker_window),
        breaker_reject_ratio=_or(ratio, default.breaker_reject_ratio),
        breaker_burst_count=burst.count if burst else default.breaker_burst_count,
        breaker_burst_window=burst.per if burst else default.breaker_burst_window,
        daily_count_cap=r.count(f, "daily_count_cap"),
        daily_amount_cap=r.amount(f, "daily_amount_cap", None),
    )


def _named_tables(r: Reader, top: Fields, section: str) -> Fields:
    if section not in top:
        return {}
    raw, key = top[section]
    if not isinstance(raw, dict):
        r.add(key, f"expected a table, got {kind_name(raw)}")
        return {}
    tables: Fields = {}
    for name, table in raw.items():
        if not _SLUG.fullmatch(name):
            r.add(f"{key}.{name}", f"not a valid name: {name!r} (a-z, 0-9, - and _, starting with a letter)")
        if isinstance(table, dict):
            tables[name] = (table, f"{key}.{name}")
        else:
            r.add(f"{key}.{name}", f"expected a table, got {kind_name(table)}")
    return tables


def build_config(path: Path, env: Mapping[str, str]) -> tuple[Config, list[Problem]]:
    r = Reader(str(path), env)
    raw: object = {}
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        r.add("", "file not found (create it, or point COUNTERSIGN_CONFIG at it)")
    except OSError as error:
        r.add("", f"cannot read the file: {error.strerror}")
    except tomllib.TOMLDecodeError as error:
        r.add("", f"not valid TOML: {error}")
    except UnicodeDecodeError as error:
        r.add("", f"not UTF-8 text (TOML files are UTF-8): byte {error.start} cannot be read")
    top = r.fields(raw, "", _TOP_KEYS)
    # Read in the order DESIGN.md lays the file out, so problems are listed in an order people recognise.
    timezone = _or(r.parsed(top, "timezone", parse_zone), ZoneInfo("UTC"))
    admins = frozenset(_or(r.listed(top, "admins", user_id), []))
    agent_rate_limit = _or(r.parsed(top, "agent_rate_limit", parse_rate), _DEFAULT_RATE)
    alerts_channel = r.parsed(top, "alerts_channel", channel_id)
    max_body_bytes = _or(r.count(top, "max_body_bytes"), 262144)
    risk_workers = _or(r.typed(top, "risk_workers", int), 0)
    if not 0 <= risk_workers <= MAX_RISK_WORKERS:
        r.add("risk_workers", f"must be between 0 and {MAX_RISK_WORKERS}, got {risk_workers}")
        risk_workers = 0
    digest = r.section(top, "digest", ("channel", "at"))
    digest_channel = r.parsed(digest, "channel", channel_id)
    digest_at = _or(r.parsed(digest, "at", parse_clock), datetime.time(9, 0))
    defaults = r.section(top, "defaults", _CATEGORY_KEYS)
    categories = {
        name: _category(r, name, key, {**defaults, **r.fields(table, key, _CATEGORY_KEYS)})
        for name, (table, key) in _named_tables(r, top, "categories").items()
    }
    agents = {
        name: _agent(r, r.fields(table, key, _AGENT_KEYS))
        for name, (table, key) in _named_tables(r, top, "agents").items()
    }
    watchdog = r.section(top, "watchdog", ("max_pending", "max_age"))
    ai = r.section(top, "ai_review", ("model", "timeout"))
    model = r.typed(ai, "model", str)
    if model is not None and not model.strip():
        r.add("ai_review.model", "must not be empty")
    config = Config(
        path=path,
        timezone=timezone,
        admins=admins,
        agent_rate_limit=agent_rate_limit,
        alerts_channel=alerts_channel,
        digest_channel=digest_channel,
        digest_at=digest_at,
        categories=MappingProxyType(categories),
        agents=MappingProxyType(agents),
        default_agent_policy=AgentPolicy(),
        watchdog_max_pending=r.count(watchdog, "max_pending"),
        watchdog_max_age=r.parsed(watchdog, "max_age", parse_duration),
        reviewer_model=model or "claude-sonnet-4-6",
        reviewer_timeout=_or(r.parsed(ai, "timeout", parse_duration), timedelta(seconds=8)),
        max_body_bytes=max_body_bytes,
        risk_workers=risk_workers,
    )
    return config, r.problems


def check_config(path: Path, env: Mapping[str, str]) -> list[Problem]:
    """Every problem in the config file at `path` (a missing file is one problem); never raises for them."""
    return build_config(path, env)[1]


def load_config(path: Path, env: Mapping[str, str]) -> Config:
    """Read and validate the config file; raise ConfigError listing every problem found."""
    config, problems = build_config(path, env)
    if problems:
        raise ConfigError(problems)
    return config
