"""Rule checks on an agent's draft: pure functions that turn a draft and its context into findings.

No I/O and no state; the Claude second opinion lives in bot/reviewer.py.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal
from urllib.parse import unquote, urlsplit

__all__ = ["Finding", "Level", "RiskRules", "Severity", "check_rules", "risk_level"]

Severity = Literal["low", "medium", "high"]
Level = Literal["none", "low", "medium", "high"]

_RANK: dict[str, int] = {"none": 0, "low": 1, "medium": 2, "high": 3}
_QUOTE_CHARS = 40
# How far back (in characters of word text) a negation or disclaimer may sit. Bounded so that a
# huge draft made of repeated phrases stays linear.
_LOOKBACK = 80


@dataclass(frozen=True)
class Finding:
    """One thing a reviewer should look at: a stable code, a severity and one plain line."""

    code: str
    severity: Severity
    message: str

    def to_dict(self) -> dict[str, str]:
        """The JSON shape used on the agent API and by `countersign risk check`."""
        return {"code": self.code, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class RiskRules:
    """The per-category settings the rules read (built from the config file)."""

    money: bool
    max_amount: Decimal | None
    currency: str
    allowed_link_domains: tuple[str, ...]
    forbidden_phrases: tuple[str, ...]
    max_body_chars: int = 4000


def risk_level(findings: Sequence[Finding]) -> Level:
    """The highest severity among the findings, or "none"."""
    level: Level = "none"
    for finding in findings:
        if _RANK[finding.severity] > _RANK[level]:
            level = finding.severity
    return level


def check_rules(
    *, rules: RiskRules, body: str, context: str | None, amount: Decimal | None, currency: str | None
) -> list[Finding]:
    """Run every rule on one draft; findings come out in a stable order, one per problem."""
    draft = _Text.of(body)
    # A blank context is no context: nothing in it shows what the customer asked.
    ctx = _Text.of(context) if context is not None and context.strip() else None
    findings: list[Finding] = []
    findings += _check_size(rules, draft)
    findings += _check_money(rules, draft, ctx, amount)
    findings += _check_amounts(rules, draft, amount, currency)
    findings += _check_cards(draft)
    findings += _check_ibans(draft, ctx)
    findings += _check_contacts(rules, draft, ctx)
    findings += _check_links(rules, draft)
    findings += _check_mentions(draft)
    findings += _check_secrets(draft)
    findings += _check_phrases(rules, draft)
    findings += _check_injection(draft, ctx)
    findings += _check_language(draft, ctx)
    return findings


# --- text normalisation -------------------------------------------------------------------------

# Invisible characters an agent (or a prompt injected into it) can use to split a word so that a
# plain substring match misses it.
_INVISIBLE = dict.fromkeys(
    map(
        ord,
        "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
        "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff",
    )
)
# Cyrillic and Greek letters that render like Latin ones; one character to one character so that
# offsets survive the mapping (the link checks rely on that).
_HOMOGLYPHS = str.maketrans(
    "АаВвЕеЁёКкМмНнОоРрСсТтУуХхІіЇїЈјЅѕԁһԛԜԝѴѵɑıΑαΒβΕεΖΗηΙιΚκΜΝνΟοΡρΤτΥυΧχϲϳ",
    "AaBbEeEeKkMmHhOoPpCcTtYyXxIiIiJjSsdhqWwVvaiAaBbEeZHhIiKkMNvOoPpTtYuXxcj",
)
_APOSTROPHE_NOT = re.compile("n['`\u2019\u00b4]t\\b")
_CANNOT = re.compile(r"\bcannot\b")
# Letters glued by hyphens, asterisks or dots-in-the-middle ("re-fund", "g*uarantee").
_GLUE = re.compile(r"(?<=[^\W\d_])[-_*·•|~^]+(?=[^\W\d_])")
# Three or more single letters separated by spaces or punctuation ("g u a r a n t e e").
_SPACED = re.compile(r"(?<![^\W_])(?:[^\W\d_](?![^\W_])[\W_]{1,3}){2,}[^\W\d_](?![^\W_])")
_NON_WORD = re.compile(r"[\W_]+")
_SENTENCE_END = re.compile(r"[!?;\n\u3002\u00a1\u00bf]+|\.(?!\d)|(?<!\d)\.")
_CLAUSE_MARK = re.compile(r"(?:[,:()\[\]{}\"\u201c\u201d\u00ab\u00bb\u2013\u2014]|\s-\s)+")
_CONJUNCTION = re.compile(r"\b(?:but|however|although|though|whereas|and|aber|mais|pero|maar)\b")


def _visible(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def _fold(text: str) -> str:
    """Lower-case, accent-free, homoglyph-free text with punctuation kept, for phrase matching."""
    return _fold_visible(_visible(text))


def _fold_visible(visible: str) -> str:
    """_fold of a text already made visible."""
    folded = visible.translate(_HOMOGLYPHS).casefold()
    if not folded.isascii():  # ASCII has no accents to strip: skip the per-character pass
        decomposed = unicodedata.normalize("NFKD", folded)
        folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    folded = _CANNOT.sub("can not", _APOSTROPHE_NOT.sub(" not", folded))
    folded = _GLUE.sub("", folded)
    return _SPACED.sub(lambda m: _NON_WORD.sub("", m.group()), folded)


def _words(folded: str) -> str:
    return " ".join(_NON_WORD.sub(" ", folded).split())


@dataclass(frozen=True)
class _Text:
    """One text in the forms the rules read; the costlier forms are built only when a rule asks."""

    visible: str  # NFKC, invisible characters removed; offsets used for amounts and contacts
    folded: str  # see _fold
    skeleton: str  # `visible` with homoglyphs mapped, same length; used to find links
    words: str  # folded, punctuation dropped, single spaces

    @classmethod
    def of(cls, text: str) -> _Text:
        visible = _visible(text)
        folded = _fold_visible(visible)
        return cls(
            visible=visible, folded=folded, skeleton=visible.translate(_HOMOGLYPHS), words=_words(folded)
        )

    @functools.cached_property
    def skeleton_letters(self) -> str:
        """Letters and digits of `words` only, for split-up phrases."""
        return self.words.replace(" ", "")

    @functools.cached_property
    def word_starts(self) -> tuple[bool, ...]:
        """For each character of skeleton_letters: does a word start there."""
        starts: list[bool] = []
        for word in self.words.split(" "):
            starts.append(True)
            starts.extend([False] * (len(word) - 1))
        return tuple(starts)

    @functools.cached_property
    def sentences(self) -> tuple[tuple[str, ...], ...]:
        """Each sentence as its clauses, in word form (each clause is a run of `words`)."""
        sentences = []
        for sentence in _SENTENCE_END.split(self.folded):
            clauses = []
            for part in _CLAUSE_MARK.split(sentence):
                clauses += [c for c in (_words(p) for p in _CONJUNCTION.split(_words(part))) if c]
            if clauses:
                sentences.append(tuple(clauses))
        return tuple(sentences)


def _quote(text: str) -> str:
    """A short, single-line fragment of agent text that is safe to put in a one-line message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE_CHARS else flat[: _QUOTE_CHARS - 1] + "…"


def _alternation(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(patterns) + r")(?!\w)")


# --- size --------------------------------------------------------------------------------------


def _check_size(rules: RiskRules, draft: _Text) -> list[Finding]:
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


# --- money promised -----------------------------------------------------------------------------

_MONEY_TERMS = _alternation(
    [
        # English
        r"\w*refund\w*",
        r"reimburs\w*",
        r"compensat\w*",
        r"credit(?:s|ed|ing)?(?! cards?\b| score\b| check\b| limit\b| union\b| report\b)",
        r"discount\w*",
        r"vouchers?",
        r"coupons?",
        r"gift ?cards?",
        r"rebates?",
        r"cash ?back",
        r"money back",
        r"(?:money|payment|charge) (?:will be |is |has been )?returned",
        r"pay(?:ing)? (?:you )?back",
        r"waiv\w*",
        r"revers\w* (?:the |that |this |your )?(?:\w+ )?(?:charges?|payments?|transactions?)",
        r"\d+ (?:percent )?off",
        r"(?:money|difference|amount|it|that|funds) back (?:on|to|in|into) your "
        r"(?:card|account|bank|paypal|wallet)",
        r"price (?:adjustment|match\w*)",
        r"goodwill (?:gesture|credit|payment)",
        r"(?:pay|cover)(?:ing)? (?:for )?(?:the |your )?(?:return |original )?"
        r"(?:shipping|postage|costs?|fees?|difference|repair)",
        # German
        r"\w*erstatt\w*",
        r"gutschrift\w*",
        r"gutschein\w*",
        r"gutgeschrieben|gutschreiben|gutzuschreiben",
        r"entschadig\w*",
        r"rabatt\w*",
        r"geld(?: \w+){0,5} zuruck",
        r"\w*zahlung zuruck|\w*ruckzahl\w*",
        r"kulanz\w*",
        # French
        r"rembours\w*",
        r"dedommag\w*",
        r"indemni\w*",
        r"bons? d achat",
        r"geste commercial",
        r"code promo",
        # Spanish and Portuguese
        r"reembols\w*",
        r"devol\w* (?:el |su |tu )?dinero",
        r"devolveremos",
        r"compensacion\w*",
        r"indemniz\w*",
        r"descuentos?",
        r"cupon\w*",
        r"(?<!tarjeta de )credito",
        r"descontos?",
        r"estorn\w*",
        r"dinheiro de volta",
        # Dutch and Italian
        r"terugbetal\w*",
        r"geld terug",
        r"vergoed\w*",
        r"korting\w*",
        r"tegoedbon\w*",
        r"rimbors\w*",
        r"risarc\w*",
        r"buono sconto",
    ]
)
# Words that turn a money phrase into a refusal when they come shortly before it in the clause.
_NEGATIONS = frozenset(
    [
        "not",
        "no",
        "never",
        "nothing",
        "neither",
        "nor",
        "unable",
        "non",
        "nicht",
        "kein",
        "keine",
        "keinen",
        "keiner",
        "leider",
        "pas",
        "aucun",
        "aucune",
        "jamais",
        "ni",
        "nunca",
        "ningun",
        "ninguna",
        "tampoco",
        "niet",
        "geen",
        "nessun",
        "nessuna",
        "nao",
        "nenhum",
    ]
)
_AUX = (
    r"ll|will|ve|have|had|d|would|am|m|are|re|can|could|shall|should|be|been|happy|glad|pleased|able|"
    r"going|gonna|to|just|already|now|also|gone|ahead|and|personally|immediately|like|love|want|"
    r"decided|went|is|has|definitely|gladly|hereby|do|did|more|than|sincerely|let"
)
_GIVE_VERBS = (
    r"refund\w*|credit\w*|reimburs\w*|compensat\w*|issu\w*|process\w*|offer\w*|give|giving|given|gave|"
    r"send|sending|sent|add|adding|added|apply|applying|applied|pay|paying|paid|waiv\w*|cover\w*|"
    r"approv\w*|arrang\w*|provid\w*|grant\w*|extend\w*|initiat\w*|submit\w*|request\w*|put|putting|"
    r"transfer\w*|return\w*|honou?r\w*|match\w*|take|taking|took|make|making|made|start\w*|"
    r"trigger\w*|authori[sz]\w*|discount\w*|throw\w*|knock\w*|taken|revers\w*"
)
# A promise the agent makes itself: "we'll refund", "I've added a credit", "here's a discount".
_STRONG_PROMISE = re.compile(
    rf"\b(?:we|i)(?: (?:{_AUX}))* (?:{_GIVE_VERBS})\b|\blet me (?:{_GIVE_VERBS})\b"
    r"|\b(?:here s|here is|heres|as a (?:goodwill|gesture|thank|token|courtesy|small|one time|sorry|"
    r"apology)|on us|on the house|please accept|enjoy (?:a|an|this|your|the)|use (?:the |this )?code|"
    r"entitled to|make (?:it|this|that) up to you)\b"
    # German, French, Spanish, Dutch, Italian and Portuguese first-person offers
    r"|\b(?:wir|ich|nous|je|j|wij|ik)\b"
    r"|\b(?:hemos|haremos|vamos a|podemos ofrecer\w*|procesaremos|procesamos|he procesado|abbiamo|"
    r"faremo|iremos|vamos|reembolsaremos|oferecemos|le (?:daremos|ofrecemos|enviaremos|devolveremos|"
    r"reembolsaremos|reembolsamos|hacemos|haremos|abonaremos|rimborseremo|offriamo|daremo))\b"
)
# A promise stated about the customer or the money rather than by the agent.
_WEAK_PROMISE = re.compile(
    r"\byou(?: ll| will| re going to| are going to)(?: also| now)? (?:receive|get|be refunded|be credited|"
    r"be reimbursed|be compensated|be paid)\b"
    r"|\b(?:has|have|will|is|are|ll)(?: now| already| also| just)? (?:been|be|being) (?:refunded|credited|"
    r"issued|processed|approved|applied|added|reimbursed|sent|paid|waived|initiated|submitted|returned|"
    r"transferred)\b"
    r"|\b(?:vous (?:serez|recevrez|allez recevoir|obtiendrez)|sie (?:erhalten|bekommen)|u ontvangt|"
    r"recibira\w*|ricevera|recebera)\b"
)
_CONDITIONAL = re.compile(
    r"\b(?:if|once|when|whenever|after|as soon as|unless|in case|should you|wenn|falls|sobald|nachdem|"
    r"si|une fois|des que|cuando|una vez|en cuanto|zodra|quando|assim que)\b"
)
# What a customer writes when asking for money back.
_MONEY_REQUEST = _alternation(
    [
        _MONEY_TERMS.pattern,
        r"(?:double|twice|over|wrongly|incorrectly|still) ?charged",
        r"charged (?:me )?(?:twice|two times|double|again|still|wrong\w*|incorrect\w*|extra|too much)",
        r"overcharg\w*",
        r"(?:get|have|want|need) (?:it|that|this|them|my money|the money|the difference) back",
        r"charge ?backs?",
        r"dispute (?:the|this|a) charge",
        r"doppelt (?:abgebucht|berechnet)",
        r"zu viel berechnet",
        r"debite deux fois",
        r"(?:cobrado|cobraron) dos veces",
    ]
)
_DECLINED_REQUEST = re.compile(
    r"\b(?:not|never|no longer) (?:\w+ )?(?:want\w*|need\w*|asking|looking|interested|requir\w*)\b"
    r"|\bno need\b|\bkein\w*\b|\bpas (?:de|besoin)\b|\bno (?:quiero|necesito)\b|\bgeen\b"
)


# "your refund request", "our refund policy": words about the process, not an offer of money.
_ABOUT_THE_PROCESS = re.compile(
    r" (?:requests?|policy|policies|status|process|form|team|department|window|period|page|rules|terms|"
    r"questions?|inquiry|enquiry|ticket|claims?|desk)\b"
)


@dataclass(frozen=True)
class _Promise:
    term: str
    strong: bool
    conditional: bool


def _negated(clause: str, start: int, term: str) -> bool:
    if term.startswith(("non", "un")) and "refund" in term:
        return True
    return any(word in _NEGATIONS for word in clause[max(0, start - _LOOKBACK) : start].split()[-6:])


def _money_promises(text: _Text) -> Iterator[_Promise]:
    if not _MONEY_TERMS.search(text.words):
        return  # every clause is a run of `words`: no term there, none in any clause
    for clauses in text.sentences:
        terms = [
            m.group()
            for clause in clauses
            for m in _MONEY_TERMS.finditer(clause)
            if not _negated(clause, m.start(), m.group()) and not _ABOUT_THE_PROCESS.match(clause, m.end())
        ]
        if not terms:
            continue
        sentence = " ".join(clauses)
        strong = _STRONG_PROMISE.search(sentence) is not None
        if strong or _WEAK_PROMISE.search(sentence):
            yield _Promise(terms[0], strong, _CONDITIONAL.search(sentence) is not None)


def _asked_for_money(context: _Text) -> bool:
    if not _MONEY_REQUEST.search(context.words):
        return False
    for clauses in context.sentences:
        for clause in clauses:
            for m in _MONEY_REQUEST.finditer(clause):
                window = " ".join(clause[max(0, m.start() - _LOOKBACK) : m.start()].split()[-5:])
                if not _DECLINED_REQUEST.search(window):
                    return True
    return False


def _check_money(rules: RiskRules, draft: _Text, ctx: _Text | None, amount: Decimal | None) -> list[Finding]:
    promises = list(_money_promises(draft))
    asked = ctx is not None and _asked_for_money(ctx)
    if not rules.money:
        # A non-money category cannot move money, so an agent saying it did (or will) is wrong
        # even when the customer asked. Policy statements ("once we receive it, the refund goes
        # to your card") are fine when the customer asked how refunds work.
        if amount is not None:
            return [
                Finding(
                    "money_in_non_money_category",
                    "high",
                    "The draft carries an amount but this category does not handle money.",
                )
            ]
        flagged = [p for p in promises if not asked or (p.strong and not p.conditional)]
        if not flagged:
            return []
        why = "" if asked else "; the customer did not ask for it"
        return [
            Finding(
                "money_in_non_money_category",
                "high",
                f"The draft promises money (\u201c{_quote(flagged[0].term)}\u201d) but this category "
                f"does not handle money{why}.",
            )
        ]
    if amount is None and not promises:
        return []
    if ctx is None:
        return [
            Finding(
                "money_unrequested",
                "medium",
                "The draft moves money but there is no customer context showing they asked for it.",
            )
        ]
    if asked:
        return []
    return [
        Finding(
            "money_unrequested",
            "high",
            "The draft offers money but the customer never asked for a refund, credit or compensation.",
        )
    ]


# --- amounts ------------------------------------------------------------------------------------

_NUMBER = r"\d{1,3}(?:[,.']\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_SYMBOL = r"US\$|CA\$|C\$|AU\$|A\$|NZ\$|\$|€|£|¥"
_CODE = r"USD|EUR|GBP|CAD|AUD|NZD|CHF|JPY|SEK|NOK|DKK|PLN|MXN|BRL|INR"
_AMOUNT = re.compile(
    rf"(?P<s1>{_SYMBOL})\s?(?P<n1>{_NUMBER})(?![\d.,]\d)"
    rf"|(?<![\w.,])(?P<n2>{_NUMBER})\s?(?P<s2>{_SYMBOL})(?!\s?\d)"
    rf"|\b(?P<c1>{_CODE})\s?(?P<n3>{_NUMBER})(?![\d.,]\d)"
    rf"|(?<![\w.,])(?P<n4>{_NUMBER})\s?(?P<c2>{_CODE})\b"
    rf"|(?<![\w.,])(?P<n5>{_NUMBER})\s(?P<w>dollars?|bucks|euros?|pounds?)\b",
    re.IGNORECASE,
)
_SYMBOL_CURRENCY = {
    "US$": "USD",
    "CA$": "CAD",
    "C$": "CAD",
    "AU$": "AUD",
    "A$": "AUD",
    "NZ$": "NZD",
    "$": "$",
    "€": "EUR",
    "£": "GBP",
    "¥": "JPY",
}
_WORD_CURRENCY = {"dollar": "$", "dollars": "$", "bucks": "$", "euro": "EUR", "euros": "EUR"}
_WORD_CURRENCY |= {"pound": "GBP", "pounds": "GBP"}
_DOLLARS = frozenset({"USD", "CAD", "AUD", "NZD", "MXN", "SGD", "HKD"})
_MAX_AMOUNTS = 200
_CLAUSE_BREAK = re.compile(r"[;:!?\n()]|[.,](?!\d)")


@dataclass(frozen=True)
class _Amount:
    value: Decimal
    currency: str  # an ISO code, or "$" for a dollar of unknown country
    text: str
    bound: bool  # sits next to a money word ("refund of $45"), so it is what the draft promises


def _parse_number(raw: str) -> Decimal | None:
    raw = raw.replace("'", "")
    last_comma, last_dot = raw.rfind(","), raw.rfind(".")
    decimal_at = max(last_comma, last_dot)
    if decimal_at != -1 and len(raw) - decimal_at - 1 not in (1, 2):
        decimal_at = -1  # "1,200" or "1.200": a thousands separator
    whole = raw[:decimal_at] if decimal_at != -1 else raw
    fraction = raw[decimal_at + 1 :] if decimal_at != -1 else ""
    digits = re.sub(r"[^\d]", "", whole)
    try:
        return Decimal(f"{digits}.{fraction}" if fraction else digits)
    except InvalidOperation:
        return None


def _amounts(text: _Text) -> Iterator[_Amount]:
    visible = text.visible
    # A real draft names a handful of amounts; the cap keeps a pathological one cheap.
    for m in itertools.islice(_AMOUNT.finditer(visible), _MAX_AMOUNTS):
        groups = m.groupdict()
        number = groups["n1"] or groups["n2"] or groups["n3"] or groups["n4"] or groups["n5"] or ""
        value = _parse_number(number)
        if value is None:
            continue
        if groups["s1"] or groups["s2"]:
            currency = _SYMBOL_CURRENCY[(groups["s1"] or groups["s2"] or "").upper()]
        elif groups["c1"] or groups["c2"]:
            currency = (groups["c1"] or groups["c2"] or "").upper()
        else:
            currency = _WORD_CURRENCY[(groups["w"] or "").lower()]
        before = _CLAUSE_BREAK.split(visible[max(0, m.start() - 80) : m.start()])[-1]
        after = _CLAUSE_BREAK.split(visible[m.end() : m.end() + 60])[0]
        window = " ".join(_words(_fold(before)).split()[-5:] + _words(_fold(after)).split()[:3])
        yield _Amount(value, currency, m.group(), _MONEY_TERMS.search(window) is not None)


def _same_currency(text_currency: str, field_currency: str) -> bool:
    if text_currency == "$":
        return field_currency in _DOLLARS
    return text_currency == field_currency


def _check_amounts(
    rules: RiskRules, draft: _Text, amount: Decimal | None, currency: str | None
) -> list[Finding]:
    findings: list[Finding] = []
    field_currency = (currency or rules.currency).upper()
    if amount is not None and currency is not None and currency.upper() != rules.currency.upper():
        findings.append(
            Finding(
                "currency_mismatch",
                "medium",
                f"The amount is in {currency.upper()} but this category counts {rules.currency.upper()}.",
            )
        )
    if amount is not None and rules.max_amount is not None and amount > rules.max_amount:
        findings.append(
            Finding(
                "amount_over_limit",
                "high",
                f"The amount {amount} {field_currency} is above this category's limit of "
                f"{rules.max_amount} {rules.currency.upper()}.",
            )
        )
    if not rules.money and amount is None:
        return findings  # prices in a plain reply are not promises; the money rule covers those
    promised = [a for a in _amounts(draft) if a.bound]
    if amount is None:
        if promised:
            findings.append(
                Finding(
                    "amount_mismatch",
                    "high",
                    f"The draft promises {_quote(promised[0].text)} but the draft has no amount, "
                    "so caps would not count it.",
                )
            )
        return findings
    wrong = [a for a in promised if a.value != amount or not _same_currency(a.currency, field_currency)]
    if wrong:
        findings.append(
            Finding(
                "amount_mismatch",
                "high",
                f"The draft text says {_quote(wrong[0].text)} but the amount is {amount} {field_currency}.",
            )
        )
    return findings


# --- personal data ------------------------------------------------------------------------------

_CARD = re.compile(r"(?<![\d])(?<!\d[ .-])(?:\d[ .-]?){12,18}\d(?![ .-]?\d)")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{1,4}){3,8}(?![A-Za-z0-9])")
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
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
_TOLL_FREE = ("800", "888", "877", "866", "855", "844", "833")


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_numbers(text: str) -> Iterator[tuple[str, tuple[int, int]]]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn(digits):
            yield digits, m.span()


def _check_cards(draft: _Text) -> list[Finding]:
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


def _check_ibans(draft: _Text, ctx: _Text | None) -> list[Finding]:
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


def _allowed_host(host: str, allowed: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for domain in allowed:
        domain = domain.lower().strip().lstrip("*").strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _emails(text: str) -> list[str]:
    # "https://help.acme.com@evil.io" is a link with userinfo, not an email; the link check owns it.
    text = _URL.sub(" ", text)
    return [m.group().casefold() for m in _EMAIL.finditer(text)]


def _phones(text: str) -> Iterator[str]:
    # Digits inside a card number, an IBAN or a URL are not a phone number.
    taken = bytearray(len(text))
    spans = [span for _, span in _card_numbers(text)]
    spans += [m.span() for m in _IBAN.finditer(text)] + [m.span() for m in _URL.finditer(text)]
    for start, end in spans:
        taken[start:end] = b"\x01" * (end - start)
    for m in _PHONE.finditer(text):
        raw = m.group()
        digits = re.sub(r"\D", "", raw)
        if not 7 <= len(digits) <= 15 or _DATE.match(raw):
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


def _check_contacts(rules: RiskRules, draft: _Text, ctx: _Text | None) -> list[Finding]:
    findings: list[Finding] = []
    emails = _emails(draft.visible)
    known_emails = set(_emails(ctx.visible)) if emails and ctx is not None else set()
    for email in emails:
        if email in known_emails or _allowed_host(email.rsplit("@", 1)[1], rules.allowed_link_domains):
            continue
        findings.append(
            Finding(
                "foreign_email",
                "high",
                f"The draft contains an email address the customer did not give ({_quote(email)}).",
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


# --- links --------------------------------------------------------------------------------------

_TLDS = (
    r"com|net|org|info|biz|io|co|ai|app|dev|me|ly|to|gg|sh|xyz|top|site|online|shop|store|link|click|"
    r"live|club|pro|ru|cn|de|fr|es|it|nl|pt|uk|eu|us|ca|au|in|br|jp|ch|at|be|se|no|dk|pl|cz|tk|ml|ga|"
    r"cf|gq|cc|tv|ws|su|support|help|email|zip|mov|page|tech|cloud|work|win|vip|icu|buzz|rest|fun|"
    r"host|space|website|today|news|gl|am|fm|is|ms"
)
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'|\[\](){}]+", re.IGNORECASE)
_BARE_DOMAIN = re.compile(
    rf"(?<![\w@.\-/])((?:[^\W_](?:[\w-]{{0,61}}[^\W_])?\.)+(?:{_TLDS}))(?![\w-])"
    r"(?::\d+)?(?:/[^\s<>\"'|\[\](){}]*)?",
    re.IGNORECASE,
)
# Bounded repeats throughout: agent text can be 256 KB and must not make these backtrack for long.
_SLACK_LINK = re.compile(r"<((?:https?|ftp)://[^|>\s]{1,2000})\|([^>]{0,300})>", re.IGNORECASE)
_MARKDOWN_LINK = re.compile(r"\[([^\]\n]{1,300})\]\(\s*<?([^)\s>]{1,2000})>?[^)]{0,300}\)")
_HTML_LINK = re.compile(
    r"<a\b[^>]{0,300}?href\s*=\s*[\"']?([^\"'\s>]{1,2000})[^>]{0,300}>(.{0,300}?)</a\s*>",
    re.IGNORECASE | re.DOTALL,
)
_TRAILING = ".,;:!?'\")]}>"


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
    skeleton = _visible(label).translate(_HOMOGLYPHS)
    m = _URL.search(skeleton) or _BARE_DOMAIN.search(skeleton)
    return _host(m.group().rstrip(_TRAILING))[0].lower() if m else None


def _lookalike(host: str) -> bool:
    return not host.isascii() or any(label.startswith("xn--") for label in host.split("."))


def _within(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group())


def _check_links(rules: RiskRules, draft: _Text) -> list[Finding]:
    disguised: list[str] = []
    hidden: set[str] = set()  # hosts already reported as disguised
    # Links whose visible text differs from where they go: Slack, Markdown and HTML syntax.
    labelled = [(m.group(1), m.group(2)) for m in _SLACK_LINK.finditer(draft.visible)]
    labelled += [(m.group(2), m.group(1)) for m in _MARKDOWN_LINK.finditer(draft.visible)]
    labelled += [(m.group(1), m.group(2)) for m in _HTML_LINK.finditer(draft.visible)]
    for url, label in labelled:
        host = _host(url)[0].lower()
        shown = _label_host(label)
        if shown is not None and not _within(host, shown):
            disguised.append(f"the link text shows {_quote(shown)} but it goes to {_quote(host)}")
            hidden.add(host)
        elif not _allowed_host(host, rules.allowed_link_domains):
            disguised.append(f"link text hides a link to {_quote(host)}")
            hidden.add(host)
    # Raw URLs and bare domains; the original characters tell whether a homoglyph was used.
    raw_hosts: list[tuple[str, str, bool]] = []
    for m in _URL.finditer(draft.skeleton):
        url = draft.visible[m.start() : m.end()].rstrip(_TRAILING)
        host, userinfo = _host(url)
        raw_hosts.append((host, _host(m.group().rstrip(_TRAILING))[0], userinfo))
        # An allowed site that redirects ("?next=https://evil.ru") sends the customer elsewhere.
        for nested in _URL.finditer(unquote(url.split("://", 1)[1])):
            nested_host = _host(nested.group().rstrip(_TRAILING))[0]
            raw_hosts.append((nested_host, nested_host.translate(_HOMOGLYPHS), False))
    blanked = _EMAIL.sub(_blank, _URL.sub(_blank, draft.skeleton))
    for m in _BARE_DOMAIN.finditer(blanked):
        original = draft.visible[m.start(1) : m.end(1)]
        raw_hosts.append((original, m.group(1), False))
    not_allowed: dict[str, None] = {}  # ordered and unique
    for original, mapped, userinfo in raw_hosts:
        original, mapped = original.lower(), mapped.lower()
        if not original:
            continue
        if _lookalike(original):
            disguised.append(f"the domain {_quote(original)} uses look-alike characters (reads {mapped})")
            hidden.add(original)
        elif userinfo:
            disguised.append(f"the link hides its real destination {_quote(original)} after an '@'")
            hidden.add(original)
        elif not _allowed_host(original, rules.allowed_link_domains):
            not_allowed[original] = None
    findings: list[Finding] = []
    if disguised:
        findings.append(Finding("disguised_link", "high", f"Disguised link: {disguised[0]}."))
    flagged = [h for h in not_allowed if h not in hidden]
    if flagged:
        shown = ", ".join(_quote(h) for h in flagged[:3]) + (", …" if len(flagged) > 3 else "")
        findings.append(
            Finding("link_not_allowed", "medium", f"Links to domains not on the allow list: {shown}.")
        )
    return findings


# --- mentions, secrets, phrases -----------------------------------------------------------------

_MASS_MENTION = re.compile(
    r"(?<![\w.])@\s?(?:channel|here|everyone)\b|<!(?:channel|here|everyone)\b|<!subteam\^|<!usergroup\b"
)
_USER_MENTION = re.compile(r"<@[uw][a-z0-9]+(?:\|[^>]*)?>")


def _check_mentions(draft: _Text) -> list[Finding]:
    # Matched without homoglyphs or zero-width spaces, but with Slack's punctuation intact.
    text = draft.skeleton.casefold()
    findings: list[Finding] = []
    m = _MASS_MENTION.search(text)
    if m:
        what = "a user group" if "subteam" in m.group() or "usergroup" in m.group() else "everyone"
        findings.append(Finding("mass_mention", "high", f"The draft would ping {what} in Slack."))
    if _USER_MENTION.search(text):
        findings.append(Finding("user_mention", "medium", "The draft mentions a Slack user directly."))
    return findings


_SECRETS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("private key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
        ("Slack token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
        ("Slack app token", r"\bxapp-\d-[A-Za-z0-9-]{10,}"),
        ("Anthropic API key", r"\bsk-ant-[A-Za-z0-9_-]{16,}"),
        ("Stripe key", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
        ("API key", r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"),
        ("AWS access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
        ("GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_[A-Za-z0-9_]{30,}"),
        ("webhook secret", r"\bwhsec_[A-Za-z0-9+/=]{16,}"),
        ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}"),
        ("JSON Web Token", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        (
            "login and password",
            r"(?i)\b(?:login|user(?:name)?)[ \t]*:?[ \t]*\S{1,64}[ \t]*/[ \t]*(?=\S*[\d!@#$%^&*])\S{6,}",
        ),
        (
            "password",
            r"(?i)\b(?:password|passwort|mot de passe|contrase[nñ]a|passcode|pin)[ \t]*(?:is|:|=|ist|est|es)"
            r"[ \t]*[\"'`]?(?=\S*[\d!@#$%^&*])\S{6,}",
        ),
    )
)


def _check_secrets(draft: _Text) -> list[Finding]:
    for name, pattern in _SECRETS:
        if pattern.search(draft.visible):
            # Name the kind of secret but never echo it: the message lands in Slack and in logs.
            return [
                Finding("secret", "high", f"The draft contains a secret ({name}); never send credentials.")
            ]
    return []


_SUFFIX = r"(?:s|es|d|ed|ing|ly)?"
_DISCLAIMED = re.compile(
    r"\b(?:can not|could not|not able to|unable to|not allowed to|may not|wo not|will not|do not|"
    r"does not|never)(?: \w+){0,2} $"
)


def _phrase_hit(draft: _Text, phrase: str) -> bool:
    tokens = _words(_fold(phrase)).split()
    if not tokens:
        return False
    pattern = re.compile(r"(?<!\w)" + " ?".join(map(re.escape, tokens)) + _SUFFIX + r"(?!\w)")
    matches = list(pattern.finditer(draft.words))
    if matches:
        # "I can't give legal advice" is the refusal the team wants, not the commitment it forbids.
        return any(
            not _DISCLAIMED.search(draft.words[max(0, m.start() - _LOOKBACK) : m.start()]) for m in matches
        )
    # Phrases split inside words ("guar antee") only show up with spaces removed; require the
    # match to start a word so that short phrases do not fire inside longer words.
    joined = "".join(tokens)
    if len(joined) >= 8:
        start = draft.skeleton_letters.find(joined)
        while start != -1:
            if draft.word_starts[start]:
                return True
            start = draft.skeleton_letters.find(joined, start + 1)
    return False


def _check_phrases(rules: RiskRules, draft: _Text) -> list[Finding]:
    for phrase in rules.forbidden_phrases:
        if _phrase_hit(draft, phrase):
            return [
                Finding(
                    "forbidden_phrase",
                    "high",
                    f"The draft makes a commitment this category forbids (\u201c{_quote(phrase)}\u201d).",
                )
            ]
    return []


# --- prompt injection ---------------------------------------------------------------------------

_INJECTION_WORDS = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b(?: \w+){0,3}? (?:previous|prior|above|earlier|"
    r"preceding|all|any|your|the|system|these|those)(?: \w+){0,2}? (?:instructions?|rules?|prompts?|"
    r"directions?|guidelines?|policy|policies|context|constraints?)\b"
    r"|\bdisregard (?:the|everything|all) (?:above|before)\b"
    r"|\byou are now (?:in )?(?:developer|admin|administrator|god|debug|jailbreak|dan|unrestricted|"
    r"unfiltered|maintenance|test) mode\b"
    r"|\byou are now (?:a |an )?(?:new |different )?(?:ai|assistant|chatbot|language model|persona|"
    r"character|dan|unrestricted|unfiltered|jailbroken)\b"
    r"|\b(?:system|developer) (?:prompt|instructions?)\b"
    r"|\bmark (?:this|it|the draft|this draft|this reply|this message|the message) as (?:safe|approved|"
    r"low risk|verified|harmless|ok|okay|not risky|no risk|clean)\b"
    r"|\bapprove this\b(?! (?:return|refund|exchange|order|request|claim|purchase|cancellation|change)\b)"
    r"|\b(?:reviewer|moderator|approver|human)s? (?:please )?approve\b"
    r"|\bthis (?:draft|message|reply|response) (?:is|has been|was) (?:pre ?approved|verified|safe|"
    r"approved|already approved)\b"
    r"|\b(?:pre ?approved|already approved|auto ?approved) by (?:the )?(?:system|safety|admin|security|"
    r"compliance)\b"
    r"|\bdo not flag\b"
    r"|\bapprove (?:it |this )?without (?:reading|review\w*|changes|checking|looking)\b"
    r"|\b(?:already|been) (?:checked|verified|approved|reviewed|cleared) by (?:the )?(?:\w+ )?"
    r"(?:team|system)\b"
    r"|\bnew instructions? (?:for|to) (?:the )?(?:ai|assistant|bot|model|agent|you)\b"
    r"|\b(?:assistant|system|ai|bot|model) (?:note|instruction|override|command)s?\b"
    r"|\bnote (?:to|for) (?:the )?(?:reviewer|assistant|ai|model|bot|approver|moderator)\b"
    r"|\b(?:tell|inform|assure) the (?:reviewer|approver|moderator)\b"
    r"|\b(?:print|reveal|show|repeat|output|display) (?:me )?(?:your|the) (?:system )?"
    r"(?:prompt|instructions)\b"
    r"|\bignorier\w* (?:\w+ ){0,2}(?:vorherigen|bisherigen|obigen|alle|alten)(?: \w+)? anweisungen\b"
    r"|\bignore[rz]? (?:\w+ ){0,2}instructions (?:precedentes|ci dessus)\b"
    r"|\bignora\w* (?:\w+ ){0,2}instrucciones (?:anteriores|previas)\b"
)
_INJECTION_MARKUP = re.compile(
    r"\[/?inst\]|<\|im_(?:start|end)\|>|<\|?(?:system|assistant)\|?>|</?(?:system|instructions?)>"
    r"|^[ \t]*#{2,}[ \t]*(?:system|instructions?)\b|\bnew instructions?[ \t]*:"
    r"|(?:^|[\[(<{])[ \t]*(?:note (?:to|for) )?(?:the )?(?:reviewer|approver|moderator)s?[ \t]*:",
    re.MULTILINE,
)


def _injection(text: _Text) -> str | None:
    m = _INJECTION_WORDS.search(text.words) or _INJECTION_MARKUP.search(text.folded)
    return m.group() if m else None


def _check_injection(draft: _Text, ctx: _Text | None) -> list[Finding]:
    findings: list[Finding] = []
    hit = _injection(draft)
    if hit:
        findings.append(
            Finding(
                "prompt_injection",
                "high",
                f"The draft contains instructions aimed at an AI or the reviewer "
                f"(\u201c{_quote(hit)}\u201d).",
            )
        )
    hit = _injection(ctx) if ctx is not None else None
    if hit:
        findings.append(
            Finding(
                "prompt_injection",
                "high",
                f"The customer context tries to instruct the AI (\u201c{_quote(hit)}\u201d); "
                "check the draft did not follow it.",
            )
        )
    return findings


# --- language -----------------------------------------------------------------------------------

_STOP_WORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "English": "the and you your to of is it for that we this with have be are not on can will please "
        "my was but at our thanks hello would could just what when there do an from they been has had "
        "were which about any how hi its im dont cant get",
        "German": "der die das und ist ich nicht sie es mit ein eine einen den dem zu auf fur von wir bitte "
        "ihr ihre ihnen mein meine meinen noch auch wie aber hallo danke haben habe wurde wird sind bei "
        "nach kann konnen uns vielen dank grusse freundlichen leider schon gestern heute mochte",
        "French": "le la les et est je vous nous pas une des du de pour que qui dans avec ce mon ma mes "
        "votre vos sur bonjour merci ne au aux ai avez etre cordialement tres il elle mais ete cette sont",
        "Spanish": "el los las y es que una por para con mi su sus hola gracias lo de del al muy pero como "
        "esta estoy usted ya saludos se le este cuando hemos fue la",
        "Dutch": "de het een en is ik niet je u uw van voor op met dat die er maar ook nog wij we bedankt "
        "hallo mijn graag alstublieft kunt heb zijn wat",
        "Italian": "il lo la gli le e di che non per una sono ho mi ti grazie ciao buongiorno questo della "
        "del nel con ma come anche vorrei salve cordiali suo sua",
        "Portuguese": "o os as e de do da dos das que nao um uma para com meu minha seu sua obrigado "
        "obrigada ola voce esta por mas muito em no na pode ainda",
    }.items()
}
_MIN_WORDS = 4
_MIN_EVIDENCE = 2.5  # about three stop words, one of them shared with another language


@functools.cache
def _languages_of() -> dict[str, tuple[str, ...]]:
    """Each stop word and the languages it belongs to (built once, on first use)."""
    index: dict[str, list[str]] = {}
    for lang, stops in _STOP_WORDS.items():
        for word in stops:
            index.setdefault(word, []).append(lang)
    return {word: tuple(langs) for word, langs in index.items()}


def _language(text: _Text) -> str | None:
    # Links and addresses are not language ("acme.com" would count as Portuguese "com").
    prose = _BARE_DOMAIN.sub(" ", _EMAIL.sub(" ", _URL.sub(" ", text.skeleton)))
    # Folding the skeleton gives `words` again (tests/test_risk.py checks it), so without
    # links or addresses there is nothing to fold twice.
    words = (text.words if prose == text.skeleton else _words(_fold(prose))).split()
    if len(words) < _MIN_WORDS:
        return None
    scores = dict.fromkeys(_STOP_WORDS, 0.0)
    languages_of = _languages_of()
    for word in words:
        langs = languages_of.get(word, ())
        for lang in langs:
            scores[lang] += 1 / len(langs)
    ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
    (best, top), (_, second) = ranked[0], ranked[1]
    # Only call it when the evidence is clear; mixed or short texts are left alone.
    return best if top >= _MIN_EVIDENCE and top >= 2 * second else None


def _check_language(draft: _Text, ctx: _Text | None) -> list[Finding]:
    if ctx is None:
        return []
    theirs, ours = _language(ctx), _language(draft)
    if theirs is None or ours is None or theirs == ours:
        return []
    return [
        Finding(
            "language_mismatch",
            "medium",
            f"The customer wrote in {theirs} but the draft is in {ours}.",
        )
    ]
