"""Text normalisation: a draft or its context in the forms the rules read, and safe quoting of it."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_QUOTE_CHARS = 40
# How far back (in characters of word text) a negation or disclaimer may sit. Bounded so that a
# huge draft made of repeated phrases stays linear.
LOOKBACK = 80

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
HOMOGLYPHS = str.maketrans(
    "АаВвЕеЁёКкМмНнОоРрСсТтУуХхІіЇїЈјЅѕԁһԛԜԝѴѵɑıΑαΒβΕεΖΗηΙιΚκΜΝνΟοΡρΤτΥυΧχϲϳ",
    "AaBbEeEeKkMmHhOoPpCcTtYyXxIiIiJjSsdhqWwVvaiAaBbEeZHhIiKkMNvOoPpTtYuXxcj",
)
_APOSTROPHES = "'`\u2019\u00b4"
_APOSTROPHE_NOT = re.compile(f"n[{_APOSTROPHES}]t\\b")
_CANNOT = re.compile(r"\bcannot\b")
# Letters glued by hyphens, asterisks or dots-in-the-middle ("re-fund", "g*uarantee").
_GLUE_MARKS = "-_*·•|~^"
_GLUE = re.compile(r"(?<=[^\W\d_])[-_*·•|~^]+(?=[^\W\d_])")
# Three or more single letters separated by spaces or punctuation ("g u a r a n t e e").
_SPACED = re.compile(r"(?<![^\W_])(?:[^\W\d_](?![^\W_])[\W_]{1,3}){2,}[^\W\d_](?![^\W_])")
_NON_WORD = re.compile(r"[\W_]+")
_WORD_RUN = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"[!?;\n\u3002\u00a1\u00bf]+|\.(?!\d)|(?<!\d)\.")
_CLAUSE_MARK = re.compile(r"(?:[,:()\[\]{}\"\u201c\u201d\u00ab\u00bb\u2013\u2014]|\s-\s)+")
_CONJUNCTION = re.compile(r"\b(?:but|however|although|though|whereas|and|aber|mais|pero|maar)\b")


def visible_form(text: str) -> str:
    if text.isascii():  # NFKC leaves ASCII alone, and every invisible character is beyond it
        return text
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def _unconfused(text: str) -> str:
    """Homoglyphs mapped to the Latin letters they imitate (all of them are beyond ASCII)."""
    return text if text.isascii() else text.translate(HOMOGLYPHS)


def folded_form(text: str) -> str:
    """Lower-case, accent-free, homoglyph-free text with punctuation kept, for phrase matching."""
    return _fold_visible(visible_form(text))


def _fold_visible(visible: str) -> str:
    """folded_form of a text already made visible."""
    folded = _unconfused(visible).casefold()
    if not folded.isascii():  # ASCII has no accents to strip: skip the per-character pass
        decomposed = unicodedata.normalize("NFKD", folded)
        folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    # Each substitution needs a literal that a cheap `in` test rules out first.
    if any(mark in folded for mark in _APOSTROPHES):
        folded = _APOSTROPHE_NOT.sub(" not", folded)
    if "cannot" in folded:
        folded = _CANNOT.sub("can not", folded)
    if any(mark in folded for mark in _GLUE_MARKS):
        folded = _GLUE.sub("", folded)
    return _SPACED.sub(lambda m: _NON_WORD.sub("", m.group()), folded)


def word_form(folded: str) -> str:
    """The text's runs of letters and digits, joined by single spaces."""
    return " ".join(_WORD_RUN.findall(folded))


@dataclass(frozen=True)
class RiskText:
    """One text in the forms the rules read; the costlier forms are built only when a rule asks."""

    visible: str  # NFKC, invisible characters removed; offsets used for amounts and contacts
    folded: str  # see folded_form
    skeleton: str  # `visible` with homoglyphs mapped, same length; used to find links
    words: str  # folded, punctuation dropped, single spaces

    @classmethod
    def of(cls, text: str) -> RiskText:
        visible = visible_form(text)
        folded = _fold_visible(visible)
        return cls(visible=visible, folded=folded, skeleton=_unconfused(visible), words=word_form(folded))

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
                clauses += [c for c in (word_form(p) for p in _CONJUNCTION.split(word_form(part))) if c]
            if clauses:
                sentences.append(tuple(clauses))
        return tuple(sentences)


def quoted(text: str) -> str:
    """A short, single-line fragment of agent text that is safe to put in a one-line message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE_CHARS else flat[: _QUOTE_CHARS - 1] + "…"


def alternation(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)(?:" + "|".join(patterns) + r")(?!\w)")
