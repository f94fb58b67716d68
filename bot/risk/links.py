"""Links (disguised, look-alike or off the allow list) and Slack mentions in a draft."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from urllib.parse import unquote, urlsplit

from bot.risk.findings import Finding, RiskRules
from bot.risk.text import HOMOGLYPHS, RiskText, quoted, visible_form

_TLDS = (
    r"com|net|org|info|biz|io|co|ai|app|dev|me|ly|to|gg|sh|xyz|top|site|online|shop|store|link|click|"
    r"live|club|pro|ru|cn|de|fr|es|it|nl|pt|uk|eu|us|ca|au|in|br|jp|ch|at|be|se|no|dk|pl|cz|tk|ml|ga|"
    r"cf|gq|cc|tv|ws|su|support|help|email|zip|mov|page|tech|cloud|work|win|vip|icu|buzz|rest|fun|"
    r"host|space|website|today|news|gl|am|fm|is|ms"
)
URL_PATTERN = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'|\[\](){}]+", re.IGNORECASE)
BARE_DOMAIN_PATTERN = re.compile(
    rf"(?<![\w@.\-/])((?:[^\W_](?:[\w-]{{0,61}}[^\W_])?\.)+(?:{_TLDS}))(?![\w-])"
    r"(?::\d+)?(?:/[^\s<>\"'|\[\](){}]*)?",
    re.IGNORECASE,
)
# A bare domain needs a letter or digit, a dot and a letter: prose without that (". Next") has none.
DOTTED_PATTERN = re.compile(r"\w\.\w")
# Here, not in contacts.py, because links and the language check blank addresses out too.
EMAIL_PATTERN = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
# Bounded repeats throughout: agent text can be 256 KB and must not make these backtrack for long.
_SLACK_LINK = re.compile(r"<((?:https?|ftp)://[^|>\s]{1,2000})\|([^>]{0,300})>", re.IGNORECASE)
_MARKDOWN_LINK = re.compile(r"\[([^\]\n]{1,300})\]\(\s*<?([^)\s>]{1,2000})>?[^)]{0,300}\)")
_HTML_LINK = re.compile(
    r"<a\b[^>]{0,300}?href\s*=\s*[\"']?([^\"'\s>]{1,2000})[^>]{0,300}>(.{0,300}?)</a\s*>",
    re.IGNORECASE | re.DOTALL,
)
_TRAILING = ".,;:!?'\")]}>"


def allowed_host(host: str, allowed: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for domain in allowed:
        domain = domain.lower().strip().lstrip("*").strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _host(url: str) -> tuple[str, bool]:
    """The host a URL really points to, and whether it hides that (userinfo before an "@")."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        return (parts.hostname or "").rstrip("."), parts.username is not None
    except ValueError:
        return "", False


def _label_host(label: str) -> str | None:
    skeleton = visible_form(label).translate(HOMOGLYPHS)
    m = URL_PATTERN.search(skeleton) or BARE_DOMAIN_PATTERN.search(skeleton)
    return _host(m.group().rstrip(_TRAILING))[0].lower() if m else None


def _lookalike(host: str) -> bool:
    return not host.isascii() or any(label.startswith("xn--") for label in host.split("."))


def _within(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group())


def without_addresses(text: str, replace: str | Callable[[re.Match[str]], str]) -> str:
    """`text` with URLs, then email addresses, replaced (each needs a literal: test that first)."""
    if "://" in text:
        text = URL_PATTERN.sub(replace, text)
    if "@" in text:
        text = EMAIL_PATTERN.sub(replace, text)
    return text


def check_links(rules: RiskRules, draft: RiskText) -> list[Finding]:
    disguised: list[str] = []
    hidden: set[str] = set()  # hosts already reported as disguised
    # Links whose visible text differs from where they go: Slack, Markdown and HTML syntax.
    # (Each pattern needs a literal that a cheap `in` test rules out first: most drafts have no links.)
    labelled: list[tuple[str, str]] = []
    if "<" in draft.visible:
        labelled += [(m.group(1), m.group(2)) for m in _SLACK_LINK.finditer(draft.visible)]
    if "](" in draft.visible:
        labelled += [(m.group(2), m.group(1)) for m in _MARKDOWN_LINK.finditer(draft.visible)]
    if "<" in draft.visible:
        labelled += [(m.group(1), m.group(2)) for m in _HTML_LINK.finditer(draft.visible)]
    for url, label in labelled:
        host = _host(url)[0].lower()
        shown = _label_host(label)
        if shown is not None and not _within(host, shown):
            disguised.append(f"the link text shows {quoted(shown)} but it goes to {quoted(host)}")
            hidden.add(host)
        elif not allowed_host(host, rules.allowed_link_domains):
            disguised.append(f"link text hides a link to {quoted(host)}")
            hidden.add(host)
    # Raw URLs and bare domains; the original characters tell whether a homoglyph was used.
    raw_hosts: list[tuple[str, str, bool]] = []
    for m in URL_PATTERN.finditer(draft.skeleton) if "://" in draft.skeleton else ():
        url = draft.visible[m.start() : m.end()].rstrip(_TRAILING)
        host, userinfo = _host(url)
        raw_hosts.append((host, _host(m.group().rstrip(_TRAILING))[0], userinfo))
        # An allowed site that redirects ("?next=https://evil.ru") sends the customer elsewhere.
        for nested in URL_PATTERN.finditer(unquote(url.split("://", 1)[1])):
            nested_host = _host(nested.group().rstrip(_TRAILING))[0]
            raw_hosts.append((nested_host, nested_host.translate(HOMOGLYPHS), False))
    blanked = without_addresses(draft.skeleton, _blank)
    for m in BARE_DOMAIN_PATTERN.finditer(blanked) if DOTTED_PATTERN.search(blanked) else ():
        original = draft.visible[m.start(1) : m.end(1)]
        raw_hosts.append((original, m.group(1), False))
    not_allowed: dict[str, None] = {}  # ordered and unique
    for original, mapped, userinfo in raw_hosts:
        original, mapped = original.lower(), mapped.lower()
        if not original:
            continue
        if _lookalike(original):
            disguised.append(f"the domain {quoted(original)} uses look-alike characters (reads {mapped})")
            hidden.add(original)
        elif userinfo:
            disguised.append(f"the link hides its real destination {quoted(original)} after an '@'")
            hidden.add(original)
        elif not allowed_host(original, rules.allowed_link_domains):
            not_allowed[original] = None
    findings: list[Finding] = []
    if disguised:
        findings.append(Finding("disguised_link", "high", f"Disguised link: {disguised[0]}."))
    flagged = [h for h in not_allowed if h not in hidden]
    if flagged:
        shown = ", ".join(quoted(h) for h in flagged[:3]) + (", …" if len(flagged) > 3 else "")
        findings.append(
            Finding("link_not_allowed", "medium", f"Links to domains not on the allow list: {shown}.")
        )
    return findings


# --- mentions -----------------------------------------------------------------------------------

_MASS_MENTION = re.compile(
    r"(?<![\w.])@\s?(?:channel|here|everyone)\b|<!(?:channel|here|everyone)\b|<!subteam\^|<!usergroup\b"
)
_USER_MENTION = re.compile(r"<@[uw][a-z0-9]+(?:\|[^>]*)?>")


def check_mentions(draft: RiskText) -> list[Finding]:
    # Matched without homoglyphs or zero-width spaces, but with Slack's punctuation intact.
    if "@" not in draft.skeleton and "<" not in draft.skeleton:
        return []  # both patterns need one of them
    text = draft.skeleton.casefold()
    findings: list[Finding] = []
    m = _MASS_MENTION.search(text)
    if m:
        what = "a user group" if "subteam" in m.group() or "usergroup" in m.group() else "everyone"
        findings.append(Finding("mass_mention", "high", f"The draft would ping {what} in Slack."))
    if _USER_MENTION.search(text):
        findings.append(Finding("user_mention", "medium", "The draft mentions a Slack user directly."))
    return findings
