"""CDS Hooks feedback (F1) request validation: every problem is reported with its entry index.

Two passes: `parse_feedback` checks the shape of each entry on its own (the models of
cdshooks/feedback.py, which /openapi.json also describes); `check_against_cards` then checks
them against the cards this service issued (read in the storing transaction). Unknown fields
and `extension` objects are ignored, as everywhere in CDS Hooks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cds_service.cdshooks.feedback import MAX_ENTRIES, FeedbackItem, FeedbackRequest
from cds_service.cdshooks.wire import is_blank, is_own, path, sentence
from cds_service.errors import BadRequest
from cds_service.store.store import KnownCard, suggestion_misfits


@dataclass(frozen=True)
class Problem:
    where: str  # e.g. feedback[2].acceptedSuggestions[0].id
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class FeedbackInvalid(BadRequest):
    """A feedback request with one or more bad entries (400); nothing of it is stored."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True)
class FeedbackEntry:
    index: int
    card_uuid: str
    outcome: str
    outcome_at: datetime
    accepted_suggestions: tuple[str, ...] = ()
    reason_system: str | None = None
    reason_code: str | None = None
    reason_display: str | None = None
    user_comment: str | None = None

    @property
    def dedup_key(self) -> str:
        """Same card, outcome, timestamp and override reason: the same report."""
        parts = (self.card_uuid, self.outcome, self.outcome_at.isoformat(),
                 self.reason_system or "", self.reason_code or "", self.user_comment or "")
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


_ENTRY_LIMIT = f"has more than {MAX_ENTRIES} entries; send them in several requests"
_INSTANT_FORM = "must be an instant with a zone, like 2026-11-20T14:05:00Z"
# Fields whose wrong JSON type (or absence) gets its own sentence; `*` is any index.
_SHAPES: dict[tuple[str, ...], str] = {
    (): "must be an object with a feedback array",
    ("feedback",): "is required and must be an array",
    ("feedback", "*"): "must be an object",
    ("feedback", "*", "outcome"): "must be 'accepted' or 'overridden'",
    ("feedback", "*", "acceptedSuggestions"): 'must be an array of {{"id": suggestion uuid}}',
    ("feedback", "*", "acceptedSuggestions", "*"): "must be an object with an id",
    ("feedback", "*", "overrideReason"): "must be an object with a reason Coding and/or a "
                                         "userComment",
    ("feedback", "*", "overrideReason", "reason"): "must be a Coding object",
}
_BY_TYPE = {"too_short": "must have at least one entry", "too_long": _ENTRY_LIMIT,
            "string_type": "must be a non-empty string",
            "string_pattern_mismatch": "must be a non-empty string",
            "string_too_long": "is longer than {max_length} characters"}


def _problem(error: ErrorDetails) -> Problem:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    where = path(loc) or "body"
    if is_own(kind):
        return Problem(where, error["msg"])
    if kind not in ("too_short", "too_long") and (shape := sentence(_SHAPES, loc)):
        return Problem(where, shape)
    if kind == "missing" or value is None:
        return Problem(where, "is required")
    if loc[-1] == "outcomeTimestamp":
        return Problem(where, _INSTANT_FORM)
    if is_blank(value):
        kind = "string_pattern_mismatch"
    return Problem(where, _BY_TYPE.get(kind, "is not valid").format(**error.get("ctx", {})))


def _entry(index: int, item: FeedbackItem) -> FeedbackEntry:
    reason = item.overrideReason
    coding = reason.reason if reason else None
    return FeedbackEntry(
        index, item.card, item.outcome, item.outcomeTimestamp,
        tuple(dict.fromkeys(s.id for s in item.acceptedSuggestions or ())),
        reason_system=coding.system if coding else None,
        reason_code=coding.code if coding else None,
        reason_display=coding.display if coding else None,
        user_comment=reason.userComment if reason else None)


def parse_feedback(body: Any, now: datetime) -> list[FeedbackEntry]:
    """The entries of a feedback request, or FeedbackInvalid naming every bad one."""
    try:
        request = FeedbackRequest.model_validate(body, context={"now": now})
    except ValidationError as exc:
        raise FeedbackInvalid([_problem(error) for error in exc.errors()]) from None
    return [_entry(index, item) for index, item in enumerate(request.feedback)]


def check_against_cards(service_id: str, entries: list[FeedbackEntry],
                        cards: dict[str, KnownCard],
                        issuer: Callable[[str], str | None] = lambda _uuid: None,
                        ) -> list[FeedbackEntry]:
    """Each entry must be about a card this service issued, naming that card's suggestions.

    A card not (yet) in the record is accepted when its uuid proves this service issued it
    (`issuer`, card_ids.py): its record may be queued in another worker, or lost with a killed
    one. Those entries are returned, to be kept until the record comes; their suggestions are
    checked then."""
    problems: list[Problem] = []
    early: list[FeedbackEntry] = []
    for entry in entries:
        where = f"feedback[{entry.index}]"
        card = cards.get(entry.card_uuid)
        if card is None:
            minted_by = issuer(entry.card_uuid)
            if minted_by == service_id:
                early.append(entry)
            elif minted_by is not None:
                problems.append(Problem(f"{where}.card", f"{entry.card_uuid} was issued by "
                                                         f"{minted_by}, not {service_id}"))
            else:
                problems.append(Problem(f"{where}.card", f"{entry.card_uuid} is not a card "
                                                         "this service issued"))
            continue
        if card.service_id != service_id:
            problems.append(Problem(f"{where}.card", f"{entry.card_uuid} was issued by "
                                                     f"{card.service_id}, not {service_id}"))
            continue
        problems += suggestion_problems(entry, card)
    if problems:
        raise FeedbackInvalid(problems)
    return early


def suggestion_problems(entry: FeedbackEntry, card: KnownCard) -> list[Problem]:
    """An accepted outcome must name the card's own suggestions, one for an at-most-one card."""
    return [Problem(f"feedback[{entry.index}]{where}", message)
            for where, message in suggestion_misfits(entry.outcome, entry.accepted_suggestions,
                                                     card)]
