"""What a draft must not contain: nothing at all or too much, secrets, and forbidden phrases."""

from __future__ import annotations

import functools
import re

from bot.risk.findings import Finding, RiskRules
from bot.risk.text import LOOKBACK, RiskText, folded_form, quoted, word_form

# --- size ---------------------------------------------------------------------------------------


def check_size(rules: RiskRules, draft: RiskText) -> list[Finding]:
    if not draft.visible.strip():
        return [Finding("empty_body", "high", "The draft is empty.")]
    if len(draft.visible) > rules.max_body_chars:
        return [
            Finding(
                "long_body",
                "low",
                f"The draft is {len(draft.visible)} characters long (limit {rules.max_body_chars}).",
            )
        ]
    return []


# --- display controls ---------------------------------------------------------------------------

# Bidirectional embeddings, overrides and isolates reorder how text is displayed ("Trojan Source"):
# the card a reviewer reads could then differ from what the customer's client shows. The marks
# right-to-left text needs (U+200E, U+200F, U+061C) are not among them.
_DISPLAY_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def check_display_controls(body: str, context: str | None) -> list[Finding]:
    where = [
        name
        for name, text in (("draft", body), ("customer's message", context))
        if text and not text.isascii() and _DISPLAY_CONTROLS.search(text)
    ]
    if not where:
        return []
    return [
        Finding(
            "display_controls",
            "medium",
            f"The {' and the '.join(where)} contain{'s' if len(where) == 1 else ''} bidirectional control"
            " characters (U+202A to U+202E, U+2066 to U+2069): the text may be displayed in another"
            " order than it is written; read it in the API.",
        )
    ]


# --- secrets ------------------------------------------------------------------------------------

# Each kind, the literal text any match must contain (a cheap test before the regex; empty: none
# to test), and the pattern. Needles of case-blind patterns are lower-case and tested on the
# lower-cased text, ASCII texts only: under re.IGNORECASE the dotless i (U+0131) matches "i".
_SECRETS: tuple[tuple[str, tuple[str, ...], re.Pattern[str], bool], ...] = tuple(
    (name, needles, re.compile(pattern), pattern.startswith("(?i)"))
    for name, needles, pattern in (
        ("private key", ("-----BEGIN ",), r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
        ("Slack token", ("xox",), r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
        ("Slack app token", ("xapp-",), r"\bxapp-\d-[A-Za-z0-9-]{10,}"),
        ("Anthropic API key", ("sk-ant-",), r"\bsk-ant-[A-Za-z0-9_-]{16,}"),
        ("Stripe key", ("k_live_", "k_test_"), r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
        ("API key", ("sk-",), r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"),
        ("AWS access key", ("AKIA", "ASIA"), r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
        (
            "GitHub token",
            ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
            r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}",
        ),
        ("webhook secret", ("whsec_",), r"\bwhsec_[A-Za-z0-9+/=]{16,}"),
        ("Google API key", ("AIza",), r"\bAIza[0-9A-Za-z_-]{35}"),
        ("JSON Web Token", ("eyJ",), r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        (
            "login and password",
            ("/",),
            r"(?i)\b(?:login|user(?:name)?)[ \t]*:?[ \t]*\S{1,64}[ \t]*/[ \t]*(?=\S*[\d!@#$%^&*])\S{6,}",
        ),
        (
            "password",
            ("pass", "contrase", "pin"),
            r"(?i)\b(?:password|passwort|mot de passe|contrase[nñ]a|passcode|pin)[ \t]*(?:is|:|=|ist|est|es)"
            r"[ \t]*[\"'`]?(?=\S*[\d!@#$%^&*])\S{6,}",
        ),
    )
)


def check_secrets(draft: RiskText) -> list[Finding]:
    text = draft.visible
    lower = text.lower() if text.isascii() else None
    for name, needles, pattern, case_blind in _SECRETS:
        if case_blind:
            if lower is not None and not any(needle in lower for needle in needles):
                continue
        elif needles and not any(needle in text for needle in needles):
            continue
        if pattern.search(text):
            # Name the kind of secret but never echo it: the message lands in Slack and in logs.
            return [
                Finding("secret", "high", f"The draft contains a secret ({name}); never send credentials.")
            ]
    return []


# --- forbidden phrases --------------------------------------------------------------------------

_SUFFIX = r"(?:s|es|d|ed|ing|ly)?"
_DISCLAIMED = re.compile(
    r"\b(?:can not|could not|not able to|unable to|not allowed to|may not|wo not|will not|do not|"
    r"does not|never)(?: \w+){0,2} $"
)


@functools.lru_cache(maxsize=1024)
def _phrase_pattern(phrase: str) -> tuple[str, re.Pattern[str]] | None:
    """A forbidden phrase in word form: its letters joined, and its pattern (built once per phrase)."""
    tokens = word_form(folded_form(phrase)).split()
    if not tokens:
        return None
    pattern = re.compile(r"(?<!\w)" + " ?".join(map(re.escape, tokens)) + _SUFFIX + r"(?!\w)")
    return "".join(tokens), pattern


def _phrase_hit(draft: RiskText, phrase: str) -> bool:
    compiled = _phrase_pattern(phrase)
    if compiled is None:
        return False
    joined, pattern = compiled
    matches = list(pattern.finditer(draft.words))
    if matches:
        # "I can't give legal advice" is the refusal the team wants, not the commitment it forbids.
        return any(
            not _DISCLAIMED.search(draft.words[max(0, m.start() - LOOKBACK) : m.start()]) for m in matches
        )
    # Phrases split inside words ("guar antee") only show up with spaces removed; require the
    # match to start a word so that short phrases do not fire inside longer words.
    if len(joined) >= 8:
        start = draft.skeleton_letters.find(joined)
        while start != -1:
            if draft.word_starts[start]:
                return True
            start = draft.skeleton_letters.find(joined, start + 1)
    return False


def check_phrases(rules: RiskRules, draft: RiskText) -> list[Finding]:
    for phrase in rules.forbidden_phrases:
        if _phrase_hit(draft, phrase):
            return [
                Finding(
                    "forbidden_phrase",
                    "high",
                    f"The draft makes a commitment this category forbids (\u201c{quoted(phrase)}\u201d).",
                )
            ]
    return []
