import datetime
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.settings import (
    AgentPolicy,
    ConfigError,
    Problem,
    check_config,
    currency_exponent,
    load_config,
    load_settings,
    missing_slack_credentials,
    parse_amount,
    parse_duration,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {"REFUND_EXECUTOR_SECRET": SECRET}

DESIGN_EXAMPLE = '''
timezone = "America/New_York"
admins = ["U0ADMIN"]                 # may resume agents, raise caps, leave manual mode
agent_rate_limit = "50/s"            # per agent token; over it: 429 with Retry-After
alerts_channel = "C0ALERTS"
[digest]
channel = "C0AUDIT"
at = "09:00"
[categories.refund]
channel = "C0REFUNDS"
reviewers = ["U0ALICE", "U0BOB"]     # Slack user ids; or reviewer_group = "S0123"
daily_count_cap = 20
daily_amount_cap = "500.00"
currency = "USD"
two_person_above = "200.00"          # two distinct approvers above this amount
max_amount = "300.00"                # per-draft limit: above it, a high-severity finding
expire_after = "4h"
executor = { url = "http://billing.internal/refunds", secret_env = "REFUND_EXECUTOR_SECRET" }
allowed_link_domains = ["help.acme.com", "acme.com"]   # links elsewhere are flagged
forbidden_phrases = ["we guarantee", "legal advice"]   # commitments the team never makes
policy = """Refunds go to the original payment method within 30 days of delivery.
Goodwill credits only when the customer asks and a human decides."""   # read by the reviewers
[categories.reply]
channel = "C0SUPPORT"
reviewers = ["U0ALICE", "U0BOB", "U0CAROL"]
daily_count_cap = 300
'''

FAULTY = """
timezone = "Mars/Olympus"
alert_channel = "C0ALERTS"
[digest]
channel = "C0AUDIT"
at = "9am"
[categories.refund]
channel = "C0REFUNDS"
reviewers = ["alice", "U0BOB"]
daily_amount_cap = 500.0
expire_after = "4x"
executor = { url = "https://billing.internal/refunds", secret_env = "REFUND_EXECUTOR_SECRET" }
[categories.reply]
reviewers = ["U0ALICE"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "countersign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def messages(problems: list[Problem]) -> dict[str, str]:
    return {problem.key: problem.message for problem in problems}


def test_load_config_reads_every_value_when_given_the_design_example(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DESIGN_EXAMPLE), ENV)

    assert config.timezone == ZoneInfo("America/New_York")
    assert config.admins == frozenset({"U0ADMIN"})
    assert (config.agent_rate_limit.count, config.agent_rate_limit.per) == (50, timedelta(seconds=1))
    assert config.alerts_channel == "C0ALERTS"
    assert config.digest_channel == "C0AUDIT"
    assert config.digest_at == datetime.time(9, 0)
    assert list(config.categories) == ["refund", "reply"]
    refund = config.categories["refund"]
    assert refund.channel == "C0REFUNDS"
    assert refund.reviewers == frozenset({"U0ALICE", "U0BOB"})
    assert refund.daily_count_cap == 20
    assert refund.daily_amount_cap == Decimal("500.00")
    assert refund.two_person_above == Decimal("200.00")
    assert refund.max_amount == Decimal("300.00")
    assert isinstance(refund.max_amount, Decimal)
    assert refund.currency == "USD"
    assert refund.expire_after == timedelta(hours=4)
    assert refund.executor is not None
    assert refund.executor.url == "http://billing.internal/refunds"
    assert refund.executor.secret_env == "REFUND_EXECUTOR_SECRET"
    assert refund.executor.secret == SECRET
    assert SECRET not in repr(refund)
    assert refund.allowed_link_domains == ("help.acme.com", "acme.com")
    assert refund.forbidden_phrases == ("we guarantee", "legal advice")
    assert refund.policy.startswith("Refunds go to the original payment method")
    assert refund.money is True
    assert refund.ai_review is True


def test_load_config_applies_defaults_when_keys_are_absent(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DESIGN_EXAMPLE), ENV)

    reply = config.categories["reply"]
    assert reply.daily_count_cap == 300
    assert reply.daily_amount_cap is None
    assert reply.currency == "USD"
    assert reply.expire_after == timedelta(hours=24)
    assert reply.executor is None
    assert reply.manual_channel is None
    assert reply.policy == ""
    assert reply.money is False
    assert config.agents == {}
    assert config.agent_policy("support-bot") == AgentPolicy()
    assert config.default_agent_policy.breaker_window == 20
    assert config.default_agent_policy.breaker_reject_ratio == Decimal("0.30")
    assert config.default_agent_policy.breaker_burst_count == 3
    assert config.default_agent_policy.breaker_burst_window == timedelta(minutes=10)
    assert config.watchdog_max_pending is None
    assert config.watchdog_max_age is None
    assert config.reviewer_model == "claude-sonnet-4-6"
    assert config.reviewer_timeout == timedelta(seconds=8)
    assert config.max_body_bytes == 262144


def test_load_config_uses_utc_and_nine_oclock_when_a_minimal_file_sets_neither(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[categories.reply]\nchannel = "C01"\nreviewer_group = "S01"\n'), {})

    assert config.timezone == ZoneInfo("UTC")
    assert config.digest_at == datetime.time(9, 0)
    assert config.digest_channel is None
    assert config.categories["reply"].reviewer_group == "S01"
    assert config.categories["reply"].reviewers == frozenset()


def test_a_default_channel_serves_every_category_that_sets_none(tmp_path: Path) -> None:
    text = """
[defaults]
channel = "C0DEFAULT"
reviewers = ["U0ALICE"]
[categories.reply]
[categories.refund]
channel = "C0REFUNDS"
"""
    config = load_config(write(tmp_path, text), {})
    assert config.categories["reply"].channel == "C0DEFAULT"
    assert config.categories["refund"].channel == "C0REFUNDS"


def test_load_config_merges_defaults_when_a_category_omits_a_key(tmp_path: Path) -> None:
    text = """
[defaults]
allowed_link_domains = ["acme.com"]
policy = "Be kind."
expire_after = "2h"
reviewers = ["U0ALICE", "U0BOB"]
[categories.reply]
channel = "C0SUPPORT"
[categories.refund]
channel = "C0REFUNDS"
policy = "Refunds only within 30 days."
currency = "JPY"
daily_amount_cap = "50000"
reviewer_group = "S0REFUND"
"""
    config = load_config(write(tmp_path, text), {})

    reply, refund = config.categories["reply"], config.categories["refund"]
    assert reply.allowed_link_domains == ("acme.com",)
    assert reply.policy == "Be kind."
    assert reply.expire_after == timedelta(hours=2)
    assert reply.reviewers == frozenset({"U0ALICE", "U0BOB"})
    assert refund.policy == "Refunds only within 30 days."
    assert refund.allowed_link_domains == ("acme.com",)
    assert refund.currency == "JPY"
    assert refund.daily_amount_cap == Decimal(50000)
    assert refund.reviewer_group == "S0REFUND"
    assert refund.money is True


def test_load_config_reads_agent_watchdog_and_reviewer_tuning_when_present(tmp_path: Path) -> None:
    text = """
max_body_bytes = 65536
[agents.support-bot]
heartbeat_timeout = "5m"
breaker_window = 10
breaker_reject_ratio = 0.5
breaker_burst = "4/15m"
daily_count_cap = 100
daily_amount_cap = "1000.00"
[watchdog]
max_pending = 50
max_age = "1h"
[ai_review]
model = "claude-haiku-4-5"
timeout = "3s"
"""
    config = load_config(write(tmp_path, text), {})

    assert config.agent_policy("support-bot") == AgentPolicy(
        heartbeat_timeout=timedelta(minutes=5),
        breaker_window=10,
        breaker_reject_ratio=Decimal("0.5"),
        breaker_burst_count=4,
        breaker_burst_window=timedelta(minutes=15),
        daily_count_cap=100,
        daily_amount_cap=Decimal("1000.00"),
    )
    assert config.agent_policy("other") == config.default_agent_policy
    assert (config.watchdog_max_pending, config.watchdog_max_age) == (50, timedelta(hours=1))
    assert (config.reviewer_model, config.reviewer_timeout) == ("claude-haiku-4-5", timedelta(seconds=3))
    assert config.max_body_bytes == 65536


@pytest.mark.parametrize(
    ("extra", "money"),
    [("money = false", False), ("money = true", True), ('max_amount = "10"', True), ("", False)],
)
def test_category_money_follows_the_flag_or_the_amount_keys_when_set(
    tmp_path: Path, extra: str, money: bool
) -> None:
    text = f'[categories.reply]\nchannel = "C01"\nreviewers = ["U01"]\n{extra}\n'

    assert load_config(write(tmp_path, text), {}).categories["reply"].money is money


def test_load_config_reports_every_problem_with_file_and_key_when_many_are_wrong(tmp_path: Path) -> None:
    path = write(tmp_path, FAULTY)

    with pytest.raises(ConfigError) as raised:
        load_config(path, {})

    found = messages(raised.value.problems)
    assert found["alert_channel"] == "unknown key (did you mean 'alerts_channel'?)"
    assert "not a Slack user id: 'alice'" in found["categories.refund.reviewers"]
    assert "Copy member ID" in found["categories.refund.reviewers"]
    assert "floats lose cents" in found["categories.refund.daily_amount_cap"]
    assert "not a duration: '4x'" in found["categories.refund.expire_after"]
    assert found["categories.refund.executor.secret_env"] == (
        "environment variable REFUND_EXECUTOR_SECRET is not set"
    )
    assert "unknown time zone: 'Mars/Olympus'" in found["timezone"]
    assert "required" in found["categories.reply.channel"]
    assert "not a time of day: '9am'" in found["digest.at"]
    assert len(raised.value.problems) == 8
    assert all(problem.file == str(path) for problem in raised.value.problems)
    lines = str(raised.value).splitlines()
    assert len(lines) == 8
    assert f"{path}: categories.refund.expire_after: not a duration: '4x'" in str(raised.value)
    assert check_config(path, {}) == raised.value.problems


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        ('channel = "C01"\nreviewers = ["U01"]\ndaily_amount_cap = "5OO"', "daily_amount_cap", "'5OO'"),
        ('channel = "C01"\nreviewers = ["U01"]\nmax_amount = "10.005"', "max_amount", "2 decimal places"),
        (
            'channel = "C01"\nreviewers = ["U01"]\ncurrency = "JPY"\nmax_amount = "1.5"',
            "max_amount",
            "0 decimal",
        ),
        (
            'channel = "C01"\nreviewers = ["U01"]\ndaily_amount_cap = "0"',
            "daily_amount_cap",
            "greater than 0",
        ),
        ('channel = "C01"\nreviewers = ["U01"]\ndaily_count_cap = 0', "daily_count_cap", "positive integer"),
        ('channel = "C01"\nreviewers = ["U01"]\ncurrency = "usd"', "currency", "unknown currency"),
        ('channel = "#refunds"\nreviewers = ["U01"]', "channel", "not a Slack channel id"),
        ('channel = "C01"\nreviewer_group = "U01"', "reviewer_group", "not a Slack user group id"),
        ('channel = "C01"', "reviewers", "reviewer_group"),
        ('channel = "C01"\nreviewers = ["U01"]\ntwo_person_above = "100"', "two_person_above", "two or more"),
        ('channel = "C01"\nreviewers = ["U01"]\nai_review = "yes"', "ai_review", "expected a boolean"),
        ('channel = "C01"\nreviewers = ["U01"]\nexpire_after = "0s"', "expire_after", "longer than zero"),
        ('channel = "C01"\nreviewers = ["U01"]\nforbidden_phrases = [""]', "forbidden_phrases", "empty"),
        (
            'channel = "C01"\nreviewers = ["U01"]\nallowed_link_domains = ["https://a.com"]',
            "allowed_link_domains",
            "domain",
        ),
        (
            'channel = "C01"\nreviewers = ["U01"]\nexecutor = { url = "ftp://x", secret_env = "S" }',
            "executor.url",
            "http",
        ),
        (
            'channel = "C01"\nreviewers = ["U01"]\nexecutor = { url = "https://x" }',
            "executor.secret_env",
            "required",
        ),
        ('channel = "C01"\nreviewers = ["U01"]\nexecuter = {}', "executer", "did you mean 'executor'?"),
    ],
)
def test_check_config_names_the_category_key_when_a_value_is_wrong(
    tmp_path: Path, body: str, key: str, fragment: str
) -> None:
    found = messages(check_config(write(tmp_path, f"[categories.refund]\n{body}\n"), {"S": SECRET}))

    assert list(found) == [f"categories.refund.{key}"]
    assert fragment in found[f"categories.refund.{key}"]


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            "[categories.Refund]\nchannel = 'C01'\nreviewers = ['U01']",
            "categories.Refund",
            "not a valid name",
        ),
        (
            "[defaults]\nmax_amount = 10.5\n[categories.a]\nchannel = 'C01'\nreviewers = ['U01']",
            "defaults.max_amount",
            "cents",
        ),
        ('agent_rate_limit = "50 per second"', "agent_rate_limit", "not a rate"),
        ("admins = 'U01'", "admins", "expected an array, got a string"),
        ("max_body_bytes = -1", "max_body_bytes", "positive integer"),
        ("[agents.bot]\nbreaker_reject_ratio = 1.5", "agents.bot.breaker_reject_ratio", "at most 1"),
        ("[agents.bot]\nbreaker_burst = '3'", "agents.bot.breaker_burst", "not a rate"),
        ("[agents.bot]\nheartbeat = '5m'", "agents.bot.heartbeat", "heartbeat_timeout"),
        ("[watchdog]\nmax_age = 'soon'", "watchdog.max_age", "not a duration"),
        ("[ai_review]\nmodel = ''", "ai_review.model", "empty"),
        ("[digest]\nat = '24:00'", "digest.at", "HH:MM"),
    ],
)
def test_check_config_names_the_key_when_a_top_level_value_is_wrong(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    found = messages(check_config(write(tmp_path, text), {}))

    assert list(found) == [key]
    assert fragment in found[key]


def test_check_config_reports_a_default_once_when_several_categories_inherit_it(tmp_path: Path) -> None:
    text = """
[defaults]
expire_after = "forever"
[categories.a]
channel = "C01"
reviewers = ["U01"]
[categories.b]
channel = "C02"
reviewers = ["U01"]
"""
    assert [p.key for p in check_config(write(tmp_path, text), {})] == ["defaults.expire_after"]


def test_check_config_flags_the_executor_secret_when_it_is_not_a_webhook_secret(tmp_path: Path) -> None:
    text = """
[categories.refund]
channel = "C01"
reviewers = ["U01"]
executor = { url = "https://billing.internal/refunds", secret_env = "REFUND_EXECUTOR_SECRET" }
"""
    found = messages(check_config(write(tmp_path, text), {"REFUND_EXECUTOR_SECRET": "hunter2"}))

    assert "whsec_" in found["categories.refund.executor.secret_env"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (f"{SECRET} whsec_bmV3LXNlY3JldC1mb3Itcm90YXRpb24=", True),  # new and old, mid-rotation
        (f"  {SECRET}\n", True),
        (f"{SECRET} hunter2", False),  # every part must be a secret
        ("   ", False),  # blank is unset
    ],
)
def test_an_executor_secret_may_be_two_during_a_rotation(tmp_path: Path, value: str, ok: bool) -> None:
    text = """
[categories.refund]
channel = "C01"
reviewers = ["U01"]
executor = { url = "https://billing.internal/refunds", secret_env = "REFUND_EXECUTOR_SECRET" }
"""
    found = messages(check_config(write(tmp_path, text), {"REFUND_EXECUTOR_SECRET": value}))

    assert ("categories.refund.executor.secret_env" not in found) is ok, found


def test_check_config_returns_one_problem_when_the_file_is_missing(tmp_path: Path) -> None:
    problems = check_config(tmp_path / "absent.toml", {})

    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{tmp_path / 'absent.toml'}: file not found")


def test_check_config_returns_one_problem_when_the_toml_is_invalid(tmp_path: Path) -> None:
    problems = check_config(write(tmp_path, "timezone = \n"), {})

    assert len(problems) == 1
    assert "not valid TOML" in problems[0].message


def test_check_config_refuses_an_expiry_so_long_that_no_draft_could_be_stored(tmp_path: Path) -> None:
    # 999999999d parses as a timedelta, but now + it overflows: every submission was a 500.
    path = write(
        tmp_path, '[categories.reply]\nchannel = "C01"\nreviewers = ["U01"]\nexpire_after = "999999999d"\n'
    )

    [problem] = check_config(path, {})

    assert (problem.key, "duration too long" in problem.message) == ("categories.reply.expire_after", True)


def test_check_config_returns_one_problem_when_the_file_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('policy = "caf\xe9"\n'.encode("latin-1"))

    problems = check_config(path, {})

    assert len(problems) == 1
    assert "not UTF-8" in problems[0].message


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg2://u:p@db/cs", "psycopg 3"),
        ("postgresql+asyncpg://u:p@db/cs", "psycopg 3"),
        ("sqlite://", "SQLite needs a file"),
        ("sqlite:///:memory:", "SQLite needs a file"),
        ("postgresql://u:secret@db:port/cs", "does not parse"),
        ("mysql://u@db/cs", "expected sqlite:///PATH"),
    ],
)
def test_load_settings_refuses_a_database_url_it_cannot_use_without_quoting_it(
    tmp_path: Path, url: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(minimal_env(tmp_path, COUNTERSIGN_DATABASE_URL=url))

    [problem] = raised.value.problems
    assert (problem.key, expected in problem.message) == ("COUNTERSIGN_DATABASE_URL", True)
    assert "secret" not in problem.message


@pytest.mark.parametrize(
    "url",
    ["sqlite:///countersign.db", "sqlite:////var/lib/cs.db", "postgresql://u@db/cs", "postgres://u@db/cs"],
)
def test_load_settings_takes_the_documented_database_urls(tmp_path: Path, url: str) -> None:
    assert load_settings(minimal_env(tmp_path, COUNTERSIGN_DATABASE_URL=url)).database_url == url


def test_load_settings_refuses_a_slack_api_url_that_does_not_parse(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(minimal_env(tmp_path, COUNTERSIGN_SLACK_API_URL="http://[bad/"))

    assert [p.key for p in raised.value.problems] == ["COUNTERSIGN_SLACK_API_URL"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("90m", timedelta(minutes=90)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_parse_duration_returns_the_timedelta_when_the_text_is_valid(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "0", "0s", "-4h", "4x", "h", "4 h", "4H", "30m1h", "1.5h", "٣h", "3651d", "87601h", "999999999d"],
)
def test_parse_duration_raises_when_the_text_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "expected"), [("500.00", "500.00"), ("20", "20"), ("0.5", "0.5")])
def test_parse_amount_keeps_the_exact_decimal_when_the_text_is_plain(text: str, expected: str) -> None:
    amount = parse_amount(text)

    assert isinstance(amount, Decimal)
    assert str(amount) == expected


@pytest.mark.parametrize(
    "text",
    ["NaN", "nan", "Infinity", "-Infinity", "inf", "-1", "+1", "1e3", "1E3", "", "1,000", " 5", ".5", "5."],
)
def test_parse_amount_raises_when_the_text_is_not_a_plain_decimal(text: str) -> None:
    with pytest.raises(ValueError, match="not a decimal amount"):
        parse_amount(text)


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("XOF", 0),
        ("BHD", 3),
        ("KWD", 3),
        ("TND", 3),
        ("KZT", 2),
        ("CRC", 2),
        ("GEL", 2),
        ("DOP", 2),
        ("VES", 2),
        ("MUR", 2),
        ("XCG", 2),
        ("ISK", 0),
    ],
)
def test_currency_exponent_returns_iso_minor_units_when_the_code_is_known(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent


@pytest.mark.parametrize("code", ["XXX", "XAU", "usd", "US", "USDX", "", "D", "HRK"])
def test_currency_exponent_raises_when_the_code_is_unknown(code: str) -> None:
    with pytest.raises(ValueError, match="unknown currency code"):
        currency_exponent(code)


def minimal_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    path = write(tmp_path, '[categories.reply]\nchannel = "C01"\nreviewers = ["U01"]\n')
    return {"COUNTERSIGN_CONFIG": str(path), **extra}


def test_load_settings_uses_defaults_when_only_the_config_path_is_set(tmp_path: Path) -> None:
    settings = load_settings(minimal_env(tmp_path))

    assert settings.slack_bot_token is None
    assert settings.slack_signing_secret is None
    assert settings.slack_app_token is None
    assert settings.anthropic_api_key is None
    assert settings.database_url == "sqlite:///countersign.db"
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.config_path == tmp_path / "countersign.toml"
    assert list(settings.config.categories) == ["reply"]


def test_load_settings_reads_every_variable_when_they_are_set(tmp_path: Path) -> None:
    env = minimal_env(
        tmp_path,
        SLACK_BOT_TOKEN="xoxb-1",
        SLACK_SIGNING_SECRET="sign",
        SLACK_APP_TOKEN="xapp-1",
        COUNTERSIGN_DATABASE_URL="postgresql://cs:pw@127.0.0.1:5432/cs",
        COUNTERSIGN_SLACK_API_URL="http://127.0.0.1:8123/api",
        ANTHROPIC_API_KEY="sk-ant-1",
    )
    settings = load_settings(env)

    assert (settings.slack_bot_token, settings.slack_signing_secret) == ("xoxb-1", "sign")
    assert settings.slack_app_token == "xapp-1"
    assert settings.database_url == "postgresql://cs:pw@127.0.0.1:5432/cs"
    assert settings.slack_api_url == "http://127.0.0.1:8123/api/"
    assert settings.anthropic_api_key == "sk-ant-1"
    assert "xoxb-1" not in repr(settings)
    assert "pw@" not in repr(settings)


def test_load_settings_reads_os_environ_when_no_env_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in minimal_env(tmp_path, SLACK_BOT_TOKEN="xoxb-env").items():
        monkeypatch.setenv(name, value)

    assert load_settings().slack_bot_token == "xoxb-env"


def test_load_settings_raises_with_environment_and_file_problems_when_both_are_wrong(tmp_path: Path) -> None:
    env = {
        "COUNTERSIGN_CONFIG": str(tmp_path / "absent.toml"),
        "COUNTERSIGN_SLACK_API_URL": "slack.local",
        "COUNTERSIGN_DATABASE_URL": "mysql://x",
    }
    with pytest.raises(ConfigError) as raised:
        load_settings(env)

    assert [(p.file, p.key) for p in raised.value.problems] == [
        ("environment", "COUNTERSIGN_SLACK_API_URL"),
        ("environment", "COUNTERSIGN_DATABASE_URL"),
        (str(tmp_path / "absent.toml"), ""),
    ]


def test_missing_slack_credentials_names_token_and_signing_secret_when_http_mode_has_neither(
    tmp_path: Path,
) -> None:
    settings = load_settings(minimal_env(tmp_path))

    found = missing_slack_credentials(settings, socket_mode=False)

    assert [m.split(" ", 1)[0] for m in found] == ["SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"]
    assert "xoxb-" in found[0]
    assert "OAuth & Permissions" in found[0]
    assert "https://api.slack.com/apps" in found[0]
    assert "Signing Secret" in found[1]


def test_missing_slack_credentials_names_the_app_token_when_socket_mode_lacks_it(tmp_path: Path) -> None:
    settings = load_settings(minimal_env(tmp_path, SLACK_BOT_TOKEN="xoxb-1"))

    found = missing_slack_credentials(settings, socket_mode=True)

    assert len(found) == 1
    assert found[0].startswith("SLACK_APP_TOKEN is not set")
    assert "xapp-" in found[0]
    assert "connections:write" in found[0]


def test_missing_slack_credentials_is_empty_when_the_mode_has_what_it_needs(tmp_path: Path) -> None:
    http = load_settings(minimal_env(tmp_path, SLACK_BOT_TOKEN="xoxb-1", SLACK_SIGNING_SECRET="s"))
    socket = load_settings(minimal_env(tmp_path, SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1"))

    assert missing_slack_credentials(http, socket_mode=False) == []
    assert missing_slack_credentials(socket, socket_mode=True) == []


def test_missing_slack_credentials_refuses_an_app_token_that_is_not_one(tmp_path: Path) -> None:
    settings = load_settings(minimal_env(tmp_path, SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xoxb-2"))

    found = missing_slack_credentials(settings, socket_mode=True)

    assert len(found) == 1 and found[0].startswith("SLACK_APP_TOKEN is not an App-Level Token")
    assert "xapp-" in found[0] and "connections:write" in found[0]
    # HTTP mode does not use the app token: only the signing secret it lacks is named.
    http = missing_slack_credentials(settings, socket_mode=False)
    assert [m.split(" ", 1)[0] for m in http] == ["SLACK_SIGNING_SECRET"]
