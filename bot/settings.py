"""One Settings object: the environment plus the TOML config file, validated once, at start.

Every problem is collected rather than the first one raised, so `check-config` can list them all.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot import netguard

_T = TypeVar("_T")
_Fields = dict[str, tuple[object, str]]  # key -> (raw value, dotted key it came from)

# [0-9], not \d: \d also matches other scripts' digits, which int() and Decimal() would accept.
_DURATION = re.compile(r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")
_AMOUNT = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?")
_RATE = re.compile(r"([0-9]{1,9})/([0-9a-z]+)")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_SLUG = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")

# ISO 4217 minor units of the currencies accepted; anything else is refused rather than guessed.
_MINOR_UNITS = {
    0: "JPY KRW VND CLP ISK UGX XAF XOF KMF PYG RWF VUV XPF BIF DJF GNF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    2: "USD EUR GBP CHF CAD AUD NZD SEK NOK DKK PLN CZK HUF RON BGN TRY RUB UAH ILS AED SAR QAR EGP ZAR"
    " NGN KES GHS MAD INR PKR BDT LKR CNY HKD TWD SGD MYR THB IDR PHP MXN BRL ARS COP PEN UYU",
}

_TOP_KEYS: tuple[str, ...] = ("timezone", "admins", "agent_rate_limit", "alerts_channel", "max_body_bytes")
_TOP_KEYS += ("digest", "defaults", "categories", "agents", "watchdog", "ai_review")
_CATEGORY_KEYS: tuple[str, ...] = ("channel", "manual_channel", "reviewers", "reviewer_group", "currency")
_CATEGORY_KEYS += ("daily_count_cap", "daily_amount_cap", "two_person_above", "max_amount", "expire_after")
_CATEGORY_KEYS += ("executor", "allowed_link_domains", "forbidden_phrases", "policy", "ai_review", "money")
_AGENT_KEYS: tuple[str, ...] = ("heartbeat_timeout", "breaker_window", "breaker_reject_ratio")
_AGENT_KEYS += ("breaker_burst", "daily_count_cap", "daily_amount_cap")


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}" if self.key else f"{self.file}: {self.message}"


class ConfigError(Exception):
    """The environment or the config file is invalid; `problems` holds every fault found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


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


@dataclass(frozen=True)
class AgentPolicy:
    heartbeat_timeout: timedelta | None = None
    breaker_window: int = 20
    breaker_reject_ratio: Decimal = Decimal("0.30")
    breaker_burst_count: int = 3
    breaker_burst_window: timedelta = timedelta(minutes=10)
    daily_count_cap: int | None = None
    daily_amount_cap: Decimal | None = None


@dataclass(frozen=True)
class RateLimit:
    count: int
    per: timedelta


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

    def agent_policy(self, name: str) -> AgentPolicy:
        """The agent's own [agents.NAME] tuning, or the defaults when it has none."""
        return self.agents.get(name, self.default_agent_policy)


@dataclass(frozen=True)
class Settings:
    slack_bot_token: str | None = field(repr=False)
    slack_signing_secret: str | None = field(repr=False)
    slack_app_token: str | None = field(repr=False)
    database_url: str = field(repr=False)  # may embed a password
    config_path: Path
    slack_api_url: str
    anthropic_api_key: str | None = field(repr=False)
    config: Config


def parse_duration(text: str) -> timedelta:
    """Parse "30s", "15m", "4h", "2d" or a combination in that order such as "1h30m"."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 15m, 4h, 2d, 1h30m)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    try:
        value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration too long: {text!r}") from None
    if not value:
        raise ValueError(f"duration must be longer than zero: {text!r}")
    return value


def parse_amount(text: str) -> Decimal:
    """Parse a plain non-negative decimal string such as "500.00"; no sign, exponent, NaN or Infinity."""
    if not _AMOUNT.fullmatch(text):
        raise ValueError(f'not a decimal amount: {text!r} (write it like "500.00")')
    return Decimal(text)


def currency_exponent(code: str) -> int:
    """Number of minor-unit digits ISO 4217 gives the currency; ValueError for a code not accepted."""
    for exponent, codes in _MINOR_UNITS.items():
        if len(code) == 3 and code in codes.split():
            return exponent
    raise ValueError(f'unknown currency code: {code!r} (use an ISO 4217 code such as "USD")')


def _parse_rate(text: str) -> RateLimit:
    match = _RATE.fullmatch(text)
    problem = ValueError(f'not a rate: {text!r} (use e.g. "50/s", "600/m", "3/10m")')
    if match is None or int(match[1]) == 0:
        raise problem
    try:
        per = parse_duration("1" + match[2] if match[2] in ("s", "m", "h", "d") else match[2])
    except ValueError:
        raise problem from None
    return RateLimit(int(match[1]), per)


def _parse_clock(text: str) -> datetime.time:
    if (match := _CLOCK.fullmatch(text)) is None:
        raise ValueError(f'not a time of day: {text!r} (use 24-hour "HH:MM", e.g. "09:00")')
    return datetime.time(int(match[1]), int(match[2]))


def _parse_zone(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f'unknown time zone: {text!r} (use an IANA name such as "Europe/Paris")') from None


def _parse_currency(text: str) -> str:
    currency_exponent(text)
    return text


def _parse_domain(text: str) -> str:
    if not _DOMAIN.fullmatch(text.lower()):
        raise ValueError(f'not a domain name: {text!r} (write just the host, e.g. "acme.com")')
    return text.lower()


def _parse_phrase(text: str) -> str:
    # An empty phrase would be found in every draft.
    if not text.strip():
        raise ValueError("a forbidden phrase cannot be empty")
    return text


def _slack_id(pattern: str, what: str, hint: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def parse(text: str) -> str:
        if not compiled.fullmatch(text):
            raise ValueError(f"not a Slack {what}: {text!r} ({hint})")
        return text

    return parse


_user_id = _slack_id(
    r"[UW][A-Z0-9]{2,}", "user id", "use the U… id from the member's profile → Copy member ID"
)
_channel_id = _slack_id(r"[CGD][A-Z0-9]{2,}", "channel id", "use the C… id from the channel details → About")
_group_id = _slack_id(r"S[A-Z0-9]{2,}", "user group id", "use the S… id of the user group")


_KINDS: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
_KINDS.update({dict: "a table", list: "an array"})


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


class _Reader:
    """Reads typed values out of TOML tables, recording a Problem for each fault and carrying on."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.problems: list[Problem] = []

    def add(self, key: str, message: str) -> None:
        problem = Problem(self.file, key, message)
        # [defaults] values are checked once per category; report each fault once.
        if problem not in self.problems:
            self.problems.append(problem)

    def fields(self, table: object, prefix: str, allowed: Sequence[str]) -> _Fields:
        if not isinstance(table, dict):
            self.add(prefix, f"expected a table, got {_kind(table)}")
            return {}
        out: _Fields = {}
        for name, value in table.items():
            key = f"{prefix}.{name}" if prefix else name
            if name in allowed:
                out[name] = (value, key)
            else:
                close = difflib.get_close_matches(name, allowed, n=1)
                self.add(key, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
        return out

    def section(self, top: _Fields, name: str, allowed: Sequence[str]) -> _Fields:
        return self.fields(top[name][0], name, allowed) if name in top else {}

    def typed(self, fields: _Fields, name: str, kind: type[_T]) -> _T | None:
        if name not in fields:
            return None
        value, key = fields[name]
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        self.add(key, f"expected {_KINDS[kind]}, got {_kind(value)}")
        return None

    def parsed(self, fields: _Fields, name: str, parse: Callable[[str], _T]) -> _T | None:
        text = self.typed(fields, name, str)
        return None if text is None else self._apply(parse, text, fields[name][1])

    def listed(self, fields: _Fields, name: str, parse: Callable[[str], _T]) -> list[_T] | None:
        items = self.typed(fields, name, list)
        if items is None:
            return None
        key = fields[name][1]
        if not all(isinstance(item, str) for item in items):
            self.add(key, "expected an array of strings")
            return None
        return [v for item in items if (v := self._apply(parse, item, key)) is not None]

    def _apply(self, parse: Callable[[str], _T], text: str, key: str) -> _T | None:
        try:
            return parse(text)
        except ValueError as error:
            self.add(key, str(error))
            return None

    def count(self, fields: _Fields, name: str) -> int | None:
        value = self.typed(fields, name, int)
        if value is not None and value <= 0:
            self.add(fields[name][1], f"must be a positive integer, got {value}")
            return None
        return value

    def amount(self, fields: _Fields, name: str, currency: str | None) -> Decimal | None:
        if name not in fields:
            return None
        value, key = fields[name]
        if isinstance(value, float):
            self.add(key, 'write amounts as strings, e.g. "500.00", floats lose cents')
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            amount: Decimal | None = Decimal(value)
        else:
            amount = self.parsed(fields, name, parse_amount)
        if amount is None:
            return None
        exponent = amount.as_tuple().exponent
        if amount <= 0:
            self.add(key, f"must be greater than 0, got {value!r}")
        elif currency and isinstance(exponent, int) and -exponent > currency_exponent(currency):
            places = currency_exponent(currency)
            self.add(key, f"{currency} amounts have at most {places} decimal places: {value!r}")
        else:
            return amount
        return None


def _executor(r: _Reader, fields: _Fields) -> Executor | None:
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
    if not secret:
        r.add(f"{key}.secret_env", f"environment variable {env_name} is not set")
    elif not _is_webhook_secret(secret):
        r.add(f"{key}.secret_env", f"{env_name} is not a Standard Webhooks secret (whsec_ then base64)")
    return Executor(url=url or "", secret_env=env_name, secret=secret)


def _is_webhook_secret(secret: str) -> bool:
    try:
        return secret.startswith("whsec_") and bool(base64.b64decode(secret[6:], validate=True))
    except (binascii.Error, ValueError):
        return False


def _category(r: _Reader, name: str, key: str, f: _Fields) -> Category:
    if "channel" not in f:
        r.add(f"{key}.channel", "required: the Slack channel id (C…) where drafts are posted")
    reviewers = frozenset(_or(r.listed(f, "reviewers", _user_id), []))
    group = r.parsed(f, "reviewer_group", _group_id)
    if "reviewer_group" not in f and not f.get("reviewers", ([], ""))[0]:
        r.add(f"{key}.reviewers", 'required: set reviewers = ["U…"] or reviewer_group = "S…"')
    currency = r.parsed(f, "currency", _parse_currency) or "USD"
    two_person_above = r.amount(f, "two_person_above", currency)
    listed = f.get("reviewers", ([], ""))[0]
    if two_person_above is not None and group is None and isinstance(listed, list) and len(listed) < 2:
        r.add(f["two_person_above"][1], "two-person rule needs two or more reviewers or a reviewer_group")
    money = r.typed(f, "money", bool)
    return Category(
        name=name,
        channel=_or(r.parsed(f, "channel", _channel_id), ""),
        manual_channel=r.parsed(f, "manual_channel", _channel_id),
        reviewers=reviewers,
        reviewer_group=group,
        daily_count_cap=r.count(f, "daily_count_cap"),
        daily_amount_cap=r.amount(f, "daily_amount_cap", currency),
        currency=currency,
        two_person_above=two_person_above,
        max_amount=r.amount(f, "max_amount", currency),
        expire_after=_or(r.parsed(f, "expire_after", parse_duration), timedelta(hours=24)),
        executor=_executor(r, f),
        allowed_link_domains=tuple(_or(r.listed(f, "allowed_link_domains", _parse_domain), [])),
        forbidden_phrases=tuple(_or(r.listed(f, "forbidden_phrases", _parse_phrase), [])),
        policy=_or(r.typed(f, "policy", str), ""),
        ai_review=_or(r.typed(f, "ai_review", bool), True),
        money=_or(money, any(k in f for k in ("daily_amount_cap", "two_person_above", "max_amount"))),
    )


def _agent(r: _Reader, f: _Fields) -> AgentPolicy:
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
    burst = r.parsed(f, "breaker_burst", _parse_rate)
    return AgentPolicy(
        heartbeat_timeout=r.parsed(f, "heartbeat_timeout", parse_duration),
        breaker_window=_or(r.count(f, "breaker_window"), default.breaker_window),
        breaker_reject_ratio=_or(ratio, default.breaker_reject_ratio),
        breaker_burst_count=burst.count if burst else default.breaker_burst_count,
        breaker_burst_window=burst.per if burst else default.breaker_burst_window,
        daily_count_cap=r.count(f, "daily_count_cap"),
        daily_amount_cap=r.amount(f, "daily_amount_cap", None),
    )


def _named_tables(r: _Reader, top: _Fields, section: str) -> _Fields:
    if section not in top:
        return {}
    raw, key = top[section]
    if not isinstance(raw, dict):
        r.add(key, f"expected a table, got {_kind(raw)}")
        return {}
    tables: _Fields = {}
    for name, table in raw.items():
        if not _SLUG.fullmatch(name):
            r.add(f"{key}.{name}", f"not a valid name: {name!r} (a-z, 0-9, - and _, starting with a letter)")
        if isinstance(table, dict):
            tables[name] = (table, f"{key}.{name}")
        else:
            r.add(f"{key}.{name}", f"expected a table, got {_kind(table)}")
    return tables


def _build(path: Path, env: Mapping[str, str]) -> tuple[Config, list[Problem]]:
    r = _Reader(str(path), env)
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
    top = r.fields(raw, "", _TOP_KEYS)
    # Read in the order DESIGN.md lays the file out, so problems are listed in an order people recognise.
    timezone = _or(r.parsed(top, "timezone", _parse_zone), ZoneInfo("UTC"))
    admins = frozenset(_or(r.listed(top, "admins", _user_id), []))
    agent_rate_limit = _or(r.parsed(top, "agent_rate_limit", _parse_rate), _DEFAULT_RATE)
    alerts_channel = r.parsed(top, "alerts_channel", _channel_id)
    max_body_bytes = _or(r.count(top, "max_body_bytes"), 262144)
    digest = r.section(top, "digest", ("channel", "at"))
    digest_channel = r.parsed(digest, "channel", _channel_id)
    digest_at = _or(r.parsed(digest, "at", _parse_clock), datetime.time(9, 0))
    defaults = r.section(top, "defaults", _CATEGORY_KEYS)
    if "channel" in defaults:
        r.add(defaults.pop("channel")[1], "a channel cannot be a default: each category sets its own")
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
    )
    return config, r.problems


def check_config(path: Path, env: Mapping[str, str]) -> list[Problem]:
    """Every problem in the config file at `path` (a missing file is one problem); never raises for them."""
    return _build(path, env)[1]


def load_config(path: Path, env: Mapping[str, str]) -> Config:
    """Read and validate the config file; raise ConfigError listing every problem found."""
    config, problems = _build(path, env)
    if problems:
        raise ConfigError(problems)
    return config


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the Settings from the environment (os.environ by default) and the config file it names."""
    env = os.environ if env is None else env
    problems: list[Problem] = []
    api_url = env.get("COUNTERSIGN_SLACK_API_URL") or "https://slack.com/api/"
    if urlsplit(api_url).scheme not in ("http", "https") or not urlsplit(api_url).netloc:
        problems.append(
            Problem("environment", "COUNTERSIGN_SLACK_API_URL", f"not an http(s) URL: {api_url!r}")
        )
    database_url = env.get("COUNTERSIGN_DATABASE_URL") or "sqlite:///countersign.db"
    if urlsplit(database_url).scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres"):
        message = "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"
        problems.append(Problem("environment", "COUNTERSIGN_DATABASE_URL", message))
    config_path = Path(env.get("COUNTERSIGN_CONFIG") or "countersign.toml")
    config, config_problems = _build(config_path, env)
    if problems or config_problems:
        raise ConfigError(problems + config_problems)
    return Settings(
        slack_bot_token=env.get("SLACK_BOT_TOKEN") or None,
        slack_signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
        slack_app_token=env.get("SLACK_APP_TOKEN") or None,
        database_url=database_url,
        config_path=config_path,
        slack_api_url=api_url if api_url.endswith("/") else api_url + "/",
        anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
        config=config,
    )


def missing_slack_credentials(settings: Settings, *, socket_mode: bool) -> list[str]:
    """One message per Slack variable `serve` needs but lacks, saying where to get it."""
    where = "create the app from manifest.yml at https://api.slack.com/apps, install it, and copy"
    messages = []
    if not settings.slack_bot_token:
        messages.append(
            f"SLACK_BOT_TOKEN is not set: {where} the Bot User OAuth Token (xoxb-…) from OAuth & Permissions."
        )
    if socket_mode and not settings.slack_app_token:
        messages.append(
            f"SLACK_APP_TOKEN is not set (needed for --socket-mode): {where} an App-Level Token (xapp-…)"
            " with the connections:write scope from Basic Information → App-Level Tokens."
        )
    if not socket_mode and not settings.slack_signing_secret:
        messages.append(
            f"SLACK_SIGNING_SECRET is not set: {where} the Signing Secret"
            " from Basic Information → App Credentials."
        )
    return messages
