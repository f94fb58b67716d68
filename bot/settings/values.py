"""Config values read from their text, strictly: durations, amounts, currencies, rates, times of day,
time zones, domains and Slack ids. Each parser raises ValueError saying how to write the value."""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# [0-9], not \d: \d also matches other scripts' digits, which int() and Decimal() would accept.
_DURATION = re.compile(r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,9})s)?")
_AMOUNT = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?")
_RATE = re.compile(r"([0-9]{1,9})/([0-9a-z]+)")
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


# ISO 4217 minor units of every currency in circulation (the 2025 list: fund, metal and test codes
# left out); anything else is refused rather than guessed.
_MINOR_UNITS = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    2: "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD"
    " CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD"
    " GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD"
    " MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP"
    " PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS"
    " TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG",
}


@functools.cache
def _exponents() -> dict[str, int]:
    return {code: exponent for exponent, codes in _MINOR_UNITS.items() for code in codes.split()}


# Far beyond any expiry, time box or overlap anyone means, and far from datetime's year 9999, so
# `now + duration` can never overflow.
MAX_DURATION = timedelta(days=3650)


@dataclass(frozen=True)
class RateLimit:
    count: int
    per: timedelta


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
    if value > MAX_DURATION:
        raise ValueError(f"duration too long: {text!r} (at most {MAX_DURATION.days}d)")
    return value


def parse_amount(text: str) -> Decimal:
    """Parse a plain non-negative decimal string such as "500.00"; no sign, exponent, NaN or Infinity."""
    if not _AMOUNT.fullmatch(text):
        raise ValueError(f'not a decimal amount: {text!r} (write it like "500.00")')
    return Decimal(text)


def currency_exponent(code: str) -> int:
    """Number of minor-unit digits ISO 4217 gives the currency; ValueError for a code not accepted."""
    exponent = _exponents().get(code)
    if exponent is not None:
        return exponent
    raise ValueError(f'unknown currency code: {code!r} (use an ISO 4217 code such as "USD")')


def parse_rate(text: str) -> RateLimit:
    match = _RATE.fullmatch(text)
    problem = ValueError(f'not a rate: {text!r} (use e.g. "50/s", "600/m", "3/10m")')
    if match is None or int(match[1]) == 0:
        raise problem
    try:
        per = parse_duration("1" + match[2] if match[2] in ("s", "m", "h", "d") else match[2])
    except ValueError:
        raise problem from None
    return RateLimit(int(match[1]), per)


def parse_clock(text: str) -> datetime.time:
    if (match := _CLOCK.fullmatch(text)) is None:
        raise ValueError(f'not a time of day: {text!r} (use 24-hour "HH:MM", e.g. "09:00")')
    return datetime.time(int(match[1]), int(match[2]))


def parse_zone(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f'unknown time zone: {text!r} (use an IANA name such as "Europe/Paris")') from None


def parse_currency(text: str) -> str:
    currency_exponent(text)
    return text


def parse_domain(text: str) -> str:
    if not _DOMAIN.fullmatch(text.lower()):
        raise ValueError(f'not a domain name: {text!r} (write just the host, e.g. "acme.com")')
    return text.lower()


def parse_phrase(text: str) -> str:
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


user_id = _slack_id(
    r"[UW][A-Z0-9]{2,}", "user id", "use the U… id from the member's profile → Copy member ID"
)
channel_id = _slack_id(r"[CGD][A-Z0-9]{2,}", "channel id", "use the C… id from the channel details → About")
group_id = _slack_id(r"S[A-Z0-9]{2,}", "user group id", "use the S… id of the user group")
