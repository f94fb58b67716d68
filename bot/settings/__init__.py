"""One Settings object: the environment plus the TOML config file, validated once, at start.

Every problem is collected rather than the first one raised, so `check-config` can list them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.settings.config import (
    AgentPolicy,
    Category,
    Config,
    Executor,
    build_config,
    check_config,
    load_config,
)
from bot.settings.reader import ConfigError, Problem
from bot.settings.values import RateLimit, currency_exponent, parse_amount, parse_duration

__all__ = [
    "AgentPolicy",
    "Category",
    "Config",
    "ConfigError",
    "Executor",
    "Problem",
    "RateLimit",
    "Settings",
    "check_config",
    "currency_exponent",
    "load_config",
    "load_settings",
    "missing_slack_credentials",
    "parse_amount",
    "parse_duration",
]


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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the Settings from the environment (os.environ by default) and the config file it names."""
    env = os.environ if env is None else env
    problems: list[Problem] = []
    api_url = env.get("COUNTERSIGN_SLACK_API_URL") or "https://slack.com/api/"
    if not _is_http_url(api_url):
        problems.append(
            Problem("environment", "COUNTERSIGN_SLACK_API_URL", f"not an http(s) URL: {api_url!r}")
        )
    database_url = env.get("COUNTERSIGN_DATABASE_URL") or "sqlite:///countersign.db"
    database_problem = _database_url_problem(database_url)
    if database_problem:
        problems.append(Problem("environment", "COUNTERSIGN_DATABASE_URL", database_problem))
    config_path = Path(env.get("COUNTERSIGN_CONFIG") or "countersign.toml")
    config, config_problems = build_config(config_path, env)
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


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


_DATABASE_URL_FORMS = "expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"


def _database_url_problem(url: str) -> str | None:
    """What is wrong with a database URL, or None. The URL itself is never quoted: it may hold a
    password."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except (ArgumentError, ValueError):
        return f"{_DATABASE_URL_FORMS} (this one does not parse)"
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if not parsed.database or parsed.database == ":memory:":
            return "SQLite needs a file: sqlite:///PATH (an in-memory database would vanish with the process)"
        return None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return None
    if parsed.get_backend_name() in ("postgresql", "postgres"):
        return f"Countersign connects with psycopg 3: write postgresql://… (not {parsed.drivername}://…)"
    return _DATABASE_URL_FORMS


def missing_slack_credentials(settings: Settings | Mapping[str, str], *, socket_mode: bool) -> list[str]:
    """One message per Slack variable `serve` needs but lacks, saying where to get it. Takes the
    settings, or the environment itself when the config file could not be loaded."""
    if isinstance(settings, Settings):
        bot_token, app_token = settings.slack_bot_token, settings.slack_app_token
        signing_secret = settings.slack_signing_secret
    else:
        bot_token, app_token = settings.get("SLACK_BOT_TOKEN"), settings.get("SLACK_APP_TOKEN")
        signing_secret = settings.get("SLACK_SIGNING_SECRET")
    where = "create the app from manifest.yml at https://api.slack.com/apps, install it, and copy"
    messages = []
    if not bot_token:
        messages.append(
            f"SLACK_BOT_TOKEN is not set: {where} the Bot User OAuth Token (xoxb-…) from OAuth & Permissions."
        )
    if socket_mode and not app_token:
        messages.append(
            f"SLACK_APP_TOKEN is not set (needed for --socket-mode): {where} an App-Level Token (xapp-…)"
            " with the connections:write scope from Basic Information → App-Level Tokens."
        )
    elif socket_mode and app_token and not app_token.startswith("xapp-"):
        # A bot token here is the usual slip; Slack would refuse it for ever, retried every 10 s.
        messages.append(
            "SLACK_APP_TOKEN is not an App-Level Token (those start with xapp-): create one with the"
            " connections:write scope under Basic Information → App-Level Tokens."
        )
    if not socket_mode and not signing_secret:
        messages.append(
            f"SLACK_SIGNING_SECRET is not set: {where} the Signing Secret"
            " from Basic Information → App Credentials."
        )
    return messages
