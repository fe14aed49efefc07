"""What the clinician already answered for a patient: the cards overridden recently.

The hook path asks for them (through a `Recall` the wiring point provides: feedback/quieting.py
reads the store) only when it has a card that could be quieted or annotated. No answer (no
store, or one too slow) means every card is shown: quieting never hides a card by failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Acknowledgement:
    """One overridden card: when, why, and what it was about (hashed keys)."""

    card_uuid: str
    hook: str
    at: datetime
    keys: frozenset[str]
    reason: str | None  # the override reason's display name


@dataclass(frozen=True)
class PatientAcknowledgements:
    overrides: tuple[Acknowledgement, ...]  # newest first, within the quiet period
    # The store keeps keyed hashes of a card's keys: the same function turns ours into theirs.
    hash_keys: Callable[[frozenset[str]], frozenset[str]]

    def covering(self, hook: str, keys: frozenset[str]) -> Acknowledgement | None:
        """The newest override, on this hook, of a card about everything this one is about."""
        hashed = self.hash_keys(keys)
        return next((a for a in self.overrides if a.hook == hook and hashed <= a.keys), None)

    @property
    def latest(self) -> Acknowledgement | None:
        return self.overrides[0] if self.overrides else None


# (patient id, now) -> the patient's recent overrides, or None when they cannot be read in time.
Recall = Callable[[str, datetime], PatientAcknowledgements | None]
