"""The language check: a draft should answer in the language the customer wrote in."""

from __future__ import annotations

import functools

from bot.risk.findings import Finding
from bot.risk.links import BARE_DOMAIN_PATTERN, DOTTED_PATTERN, without_addresses
from bot.risk.text import RiskText, folded_form, word_form

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


def _language(text: RiskText) -> str | None:
    # Links and addresses are not language ("acme.com" would count as Portuguese "com").
    prose = without_addresses(text.skeleton, " ")
    if DOTTED_PATTERN.search(prose):
        prose = BARE_DOMAIN_PATTERN.sub(" ", prose)
    # Folding the skeleton gives `words` again (tests/test_risk.py checks it), so without
    # links or addresses there is nothing to fold twice.
    words = (text.words if prose == text.skeleton else word_form(folded_form(prose))).split()
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


def check_language(draft: RiskText, ctx: RiskText | None) -> list[Finding]:
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
