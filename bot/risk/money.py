"""Money promised in a draft, and whether the customer asked for money back."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from bot.risk.findings import Finding, RiskRules
from bot.risk.text import LOOKBACK, RiskText, alternation, quoted

MONEY_TERMS = alternation(
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
_MONEY_REQUEST = alternation(
    [
        MONEY_TERMS.pattern,
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
    return any(word in _NEGATIONS for word in clause[max(0, start - LOOKBACK) : start].split()[-6:])


def _money_promises(text: RiskText) -> Iterator[_Promise]:
    if not MONEY_TERMS.search(text.words):
        return  # every clause is a run of `words`: no term there, none in any clause
    for clauses in text.sentences:
        terms = [
            m.group()
            for clause in clauses
            for m in MONEY_TERMS.finditer(clause)
            if not _negated(clause, m.start(), m.group()) and not _ABOUT_THE_PROCESS.match(clause, m.end())
        ]
        if not terms:
            continue
        sentence = " ".join(clauses)
        strong = _STRONG_PROMISE.search(sentence) is not None
        if strong or _WEAK_PROMISE.search(sentence):
            yield _Promise(terms[0], strong, _CONDITIONAL.search(sentence) is not None)


def _asked_for_money(context: RiskText) -> bool:
    if not _MONEY_REQUEST.search(context.words):
        return False
    for clauses in context.sentences:
        for clause in clauses:
            for m in _MONEY_REQUEST.finditer(clause):
                window = " ".join(clause[max(0, m.start() - LOOKBACK) : m.start()].split()[-5:])
                if not _DECLINED_REQUEST.search(window):
                    return True
    return False


def check_money(
    rules: RiskRules, draft: RiskText, ctx: RiskText | None, amount: Decimal | None
) -> list[Finding]:
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
                f"The draft promises money (\u201c{quoted(flagged[0].term)}\u201d) but this category "
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
