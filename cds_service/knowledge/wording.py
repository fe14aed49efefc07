"""What the words around a diagnosis say about it: denied, suspected, past, or only a risk.

A negation removes a diagnosis only when it governs the term itself ("no evidence of
calciphylaxis", "calciphylaxis ruled out"); words about its features ("calciphylaxis, not
ulcerated", "without secondary infection") leave it standing. The phrases are knowledge-file
data; this module only compiles them around the concept's own term pattern.

A trigger governs the term when it stands right before it, with at most a few filler words
between ("no clinical signs of", "not consistent with"), or right after it ("… ruled out").
Sentence punctuation (".", ",", ";") ends a trigger's reach, so "no eschar; calciphylaxis of the
thigh" is a diagnosis of calciphylaxis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The certainties a Condition's wording can give, strongest first.
NEGATED = "negated"
NOT_A_DIAGNOSIS = "not-a-diagnosis"  # "at risk of", "screening for"
PRIOR = "prior"  # "history of", "resolved"
SUSPECTED = "suspected"
CONFIRMED = "confirmed"

_GAP = r"[\s\-:(\[]+"  # what may stand between a trigger and the term
# After the term, a comma may introduce a past or uncertain state ("calciphylaxis, resolved") but
# not a negation ("calciphylaxis, absent pulses" still states calciphylaxis).
_GAP_AFTER_STATE = r"[\s\-:(\[,]+"
_MAX_FILLERS = 4


def _alternatives(phrases: list[str]) -> str:
    ordered = sorted({p.lower() for p in phrases}, key=len, reverse=True)
    return "|".join(re.sub(r"(\\ | )+", r"\\s+", re.escape(p)) for p in ordered)


def _split(triggers: list[str]) -> tuple[list[str], list[str]]:
    """Word triggers need a gap from the term; symbols ("?") may touch it ("calciphylaxis?")."""
    words = [t for t in triggers if t[0].isalnum() and t[-1].isalnum()]
    return words, [t for t in triggers if t not in words]


def _before(triggers: list[str], fillers: str, term: str) -> str:
    # A trigger that ends in a symbol ("?") may touch the term: "?calciphylaxis".
    return (rf"(?<![a-z0-9])(?:{_alternatives(triggers)})(?:(?<=[a-z0-9]){_GAP}|(?<![a-z0-9])"
            rf"[\s\-:(\[]*)(?:(?:{fillers}){_GAP}){{0,{_MAX_FILLERS}}}(?:{term})(?![a-z0-9])")


def _after(triggers: list[str], fillers: str, term: str, gap: str) -> str:
    words, symbols = _split(triggers)
    parts = []
    if words:
        parts.append(rf"{gap}(?:(?:{fillers}){gap}){{0,{_MAX_FILLERS}}}"
                     rf"(?:{_alternatives(words)})(?![a-z0-9])")
    if symbols:
        parts.append(rf"[\s]*(?:{_alternatives(symbols)})")
    return rf"(?<![a-z0-9])(?:{term})(?:{'|'.join(parts)})"


@dataclass(frozen=True)
class Wording:
    """Compiled wording rules for one concept's term."""

    rules: tuple[tuple[str, re.Pattern[str]], ...]  # (certainty, pattern), strongest first

    @classmethod
    def compile(cls, term: str, spec: dict[str, Any]) -> Wording:
        """`term` is the regex body of the concept's phrases; `spec` the knowledge-file table."""
        before_fill = _alternatives(spec.get("fillers_before", []))
        after_fill = _alternatives(spec.get("fillers_after", []))
        rules = []
        for certainty, key in ((NEGATED, "negated"), (NOT_A_DIAGNOSIS, "not_a_diagnosis"),
                               (PRIOR, "prior"), (SUSPECTED, "suspected")):
            parts = []
            if spec.get(f"{key}_before"):
                parts.append(_before(spec[f"{key}_before"], before_fill or "(?!)", term))
            if spec.get(f"{key}_after"):
                gap = _GAP if certainty == NEGATED else _GAP_AFTER_STATE
                parts.append(_after(spec[f"{key}_after"], after_fill or "(?!)", term, gap))
            if parts:
                rules.append((certainty, re.compile("|".join(parts), re.IGNORECASE)))
        return cls(tuple(rules))

    def certainty(self, text: str) -> str:
        """What the text says of the term it contains; CONFIRMED when no rule applies."""
        for certainty, pattern in self.rules:
            if pattern.search(text):
                return certainty
        return CONFIRMED
