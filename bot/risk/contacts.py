"""Personal data in a draft: card numbers, IBANs, email addresses and phone numbers."""

from __future__ import annotations

import re
from collections.abc import Iterator

from bot.risk.findings import Finding, RiskRules
from bot.risk.links import EMAIL_PATTERN, URL_PATTERN, allowed_host
from bot.risk.text import RiskText, quoted

_CARD = re.compile(r"(?<![\d])(?<!\d[ .-])(?:\d[ .-]?){12,18}\d(?![ .-]?\d)")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{1,4}){3,8}(?![A-Za-z0-9])")
_PHONE = re.compile(
    r"(?<![\w+#/=.,$€£-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{2,8}){1,4}"
    r"(?![\w-]|[.,]\d)|\+\d{8,15}\b"
)
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")
# Numbers labelled like this are references, however much they look like a phone number.
_NUMBER_LABEL = re.compile(
    r"(?:#|\b(?:order|orders|ticket|invoice|tracking|ref|reference|case|rma|account|sku|item|model|"
    r"bestellung|bestellnummer|pedido|commande|ordine|bestelling|rechnung|factura|facture|iban)"
    r"(?:\s*(?:no|nr|number|id|#))?)[\s.:#-]*$",
    re.IGNORECASE,
)
_DIGIT = re.compile(r"\d")
_ASCII_DIGITS = "0123456789"
_CARD_DIGITS = 13  # the fewest digits _CARD matches
_PHONE_DIGITS = 7  # the fewest digits _phones yields
_TOLL_FREE = ("800", "888", "877", "866", "855", "844", "833")


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _fewer_digits(text: str, needed: int) -> bool:
    """Whether the text certainly holds fewer digits than `needed`: a few C-level counts instead
    of a regex scan. Only ASCII texts are counted: a regex digit also matches other scripts' digits."""
    return text.isascii() and sum(map(text.count, _ASCII_DIGITS)) < needed


def _card_numbers(text: str) -> Iterator[tuple[str, tuple[int, int]]]:
    if _fewer_digits(text, _CARD_DIGITS):
        return
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if _CARD_DIGITS <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn(digits):
            yield digits, m.span()


def check_cards(draft: RiskText) -> list[Finding]:
    cards = [digits for digits, _ in _card_numbers(draft.visible)]
    if not cards:
        return []
    # Never echo a full card number back into Slack; the last four are enough to find it.
    return [
        Finding(
            "card_number",
            "high",
            f"The draft contains a full card number (ending {cards[0][-4:]}); never send card numbers.",
        )
    ]


def _valid_iban(candidate: str) -> bool:
    if not 15 <= len(candidate) <= 34 or not candidate[2:4].isdigit():
        return False
    rearranged = candidate[4:] + candidate[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _ibans(text: str) -> Iterator[str]:
    for m in _IBAN.finditer(text):
        compact = m.group().replace(" ", "").upper()
        # The pattern is greedy and may swallow a following word; try shorter prefixes too.
        for end in range(len(compact), 14, -1):
            if _valid_iban(compact[:end]):
                yield compact[:end]
                break


def _masked(iban: str) -> str:
    return f"{iban[:4]}…{iban[-4:]}"


def check_ibans(draft: RiskText, ctx: RiskText | None) -> list[Finding]:
    found = list(_ibans(draft.visible))
    if not found:
        return []
    theirs = set(_ibans(ctx.visible)) if ctx is not None else set()
    foreign = [iban for iban in found if iban not in theirs]
    if foreign:
        return [
            Finding(
                "iban",
                "high",
                f"The draft contains a bank account number (IBAN {_masked(foreign[0])}) "
                "that the customer did not give.",
            )
        ]
    return [Finding("iban", "low", f"The draft repeats the customer's own IBAN ({_masked(found[0])}).")]


def _emails(text: str) -> list[str]:
    if "@" not in text:
        return []
    # "https://help.acme.com@evil.io" is a link with userinfo, not an email; the link check owns it.
    text = URL_PATTERN.sub(" ", text)
    return [m.group().casefold() for m in EMAIL_PATTERN.finditer(text)]


def _phones(text: str) -> Iterator[str]:
    if _fewer_digits(text, _PHONE_DIGITS) or not _DIGIT.search(text):
        return
    # Digits inside a card number, an IBAN or a URL are not a phone number.
    taken = bytearray(len(text))
    spans = [span for _, span in _card_numbers(text)]
    spans += [m.span() for m in _IBAN.finditer(text)]
    if "://" in text:
        spans += [m.span() for m in URL_PATTERN.finditer(text)]
    for start, end in spans:
        taken[start:end] = b"\x01" * (end - start)
    for m in _PHONE.finditer(text):
        raw = m.group()
        digits = re.sub(r"\D", "", raw)
        if not _PHONE_DIGITS <= len(digits) <= 15 or _DATE.match(raw):
            continue
        if raw.isdigit() and not raw.startswith("+"):
            continue  # a bare run of digits is an order or account number far more often
        if taken[m.start()]:
            continue
        if _NUMBER_LABEL.search(text[max(0, m.start() - 20) : m.start()]):
            continue
        yield digits


def _suffixes(digits: str) -> set[str]:
    """A number written with or without its country or area code: compare the last 7+ digits."""
    return {digits[i:] for i in range(len(digits) - 6)}


def check_contacts(rules: RiskRules, draft: RiskText, ctx: RiskText | None) -> list[Finding]:
    findings: list[Finding] = []
    emails = _emails(draft.visible)
    known_emails = set(_emails(ctx.visible)) if emails and ctx is not None else set()
    for email in emails:
        if email in known_emails or allowed_host(email.rsplit("@", 1)[1], rules.allowed_link_domains):
            continue
        findings.append(
            Finding(
                "foreign_email",
                "high",
                f"The draft contains an email address the customer did not give ({quoted(email)}).",
            )
        )
        break
    phones = list(_phones(draft.visible))
    if not phones:
        return findings
    known_phones = set(_phones(ctx.visible)) if ctx is not None else set()
    if ctx is not None:
        # Customers also write numbers without any separators; count those as theirs too.
        known_phones.update(re.findall(r"\d{7,15}", re.sub(r"[\s().-]", "", ctx.visible)))
    known_tails = {tail for known in known_phones for tail in _suffixes(known)}
    for phone in phones:
        national = phone[1:] if len(phone) == 11 and phone.startswith("1") else phone
        if national.startswith(_TOLL_FREE) and len(national) == 10:
            continue  # a toll-free line is a company's, not a person's
        if phone in known_tails or _suffixes(phone) & known_phones:
            continue
        findings.append(
            Finding(
                "foreign_phone",
                "high",
                f"The draft contains a phone number the customer did not give (ending {phone[-4:]}).",
            )
        )
        break
    return findings
