"""CDS Hooks feedback (F1) request validation: every problem is reported with its entry index.

Two passes: `parse_feedback` checks the shape of each entry on its own; `check_against_cards`
then checks them against the cards this service issued (read in the storing transaction).
Unknown fields and `extension` objects are ignored, as everywhere in CDS Hooks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cds_service.errors import BadRequest
from cds_service.store.store import KnownCard, suggestion_misfits

MAX_ENTRIES = 1000
MAX_ID_LENGTH = 64  # card and suggestion uuids (ours are 36 characters)
MAX_CODE_LENGTH = 200
MAX_TEXT_LENGTH = 500
MAX_COMMENT_LENGTH = 4000
# An outcome from the future is a broken clock or a forged report; allow ordinary clock skew.
FUTURE_TOLERANCE = timedelta(minutes=5)
OUTCOMES = ("accepted", "overridden")
# A FHIR instant: date, time to the second, optional fraction, and a zone (Z or an offset).
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


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


def _text(value: Any, where: str, problems: list[Problem], limit: int, *,
          required: bool = True) -> str | None:
    if value is None:
        if required:
            problems.append(Problem(where, "is required"))
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(Problem(where, "must be a non-empty string"))
        return None
    if len(value) > limit:
        problems.append(Problem(where, f"is longer than {limit} characters"))
        return None
    return value


def _uuid(value: Any, where: str, problems: list[Problem]) -> str | None:
    text = _text(value, where, problems, MAX_ID_LENGTH + len("urn:uuid:"))
    return text.removeprefix("urn:uuid:") if text else None  # the URN form is the same id


def _instant(value: Any, where: str, now: datetime, problems: list[Problem]) -> datetime | None:
    if value is None:
        problems.append(Problem(where, "is required"))
        return None
    if not isinstance(value, str) or not (match := _INSTANT.match(value)):
        problems.append(Problem(where, "must be an instant with a zone, like "
                                       "2026-11-20T14:05:00Z"))
        return None
    fraction = match.group(1) or ""
    try:  # fromisoformat takes at most microseconds
        parsed = datetime.fromisoformat(value.replace(fraction, fraction[:7], 1))
    except ValueError:
        problems.append(Problem(where, "is not a valid date and time"))
        return None
    parsed = parsed.astimezone(UTC)
    if parsed > now + FUTURE_TOLERANCE:
        problems.append(Problem(where, "is in the future"))
        return None
    return parsed


def _accepted_suggestions(value: Any, where: str, problems: list[Problem]) -> tuple[str, ...]:
    if not isinstance(value, list):
        problems.append(Problem(where, "must be an array of {\"id\": suggestion uuid}"))
        return ()
    ids: list[str] = []
    for position, item in enumerate(value):
        here = f"{where}[{position}]"
        if not isinstance(item, dict):
            problems.append(Problem(here, "must be an object with an id"))
            continue
        if (suggestion := _uuid(item.get("id"), f"{here}.id", problems)) is not None:
            ids.append(suggestion)
    return tuple(dict.fromkeys(ids))


def _parse_entry(index: int, entry: Any, now: datetime,
                 problems: list[Problem]) -> FeedbackEntry | None:
    where = f"feedback[{index}]"
    if not isinstance(entry, dict):
        problems.append(Problem(where, "must be an object"))
        return None
    before = len(problems)
    card = _uuid(entry.get("card"), f"{where}.card", problems)
    outcome = entry.get("outcome")
    if outcome not in OUTCOMES:
        problems.append(Problem(f"{where}.outcome", "must be 'accepted' or 'overridden'"))
    outcome_at = _instant(entry.get("outcomeTimestamp"), f"{where}.outcomeTimestamp", now,
                          problems)
    accepted: tuple[str, ...] = ()
    suggestions = entry.get("acceptedSuggestions")
    if outcome == "accepted":
        if suggestions is None:
            problems.append(Problem(f"{where}.acceptedSuggestions",
                                    "is required when the outcome is accepted"))
        else:
            accepted = _accepted_suggestions(suggestions, f"{where}.acceptedSuggestions",
                                             problems)
    elif outcome == "overridden" and suggestions not in (None, []):
        problems.append(Problem(f"{where}.acceptedSuggestions",
                                "is only for an accepted outcome"))
    reason: dict[str, str | None] = {}
    if (override := entry.get("overrideReason")) is not None and outcome in OUTCOMES:
        if outcome == "accepted":
            problems.append(Problem(f"{where}.overrideReason", "is only for an overridden "
                                                               "outcome"))
        else:
            reason = _override_reason(override, f"{where}.overrideReason", problems)
    if len(problems) > before:
        return None
    return FeedbackEntry(index, card, outcome, outcome_at, accepted, **reason)


def _override_reason(value: Any, where: str, problems: list[Problem]) -> dict[str, str | None]:
    if not isinstance(value, dict):
        problems.append(Problem(where, "must be an object with a reason Coding and/or a "
                                       "userComment"))
        return {}
    coding, comment = value.get("reason"), value.get("userComment")
    if coding is None and comment is None:
        problems.append(Problem(where, "needs a reason, a userComment or both"))
        return {}
    reason: dict[str, str | None] = {
        "user_comment": _text(comment, f"{where}.userComment", problems, MAX_COMMENT_LENGTH,
                              required=False)}
    if coding is not None:
        if not isinstance(coding, dict):
            problems.append(Problem(f"{where}.reason", "must be a Coding object"))
        else:
            reason["reason_system"] = _text(coding.get("system"), f"{where}.reason.system",
                                            problems, MAX_TEXT_LENGTH)
            reason["reason_code"] = _text(coding.get("code"), f"{where}.reason.code", problems,
                                          MAX_CODE_LENGTH)
            reason["reason_display"] = _text(coding.get("display"), f"{where}.reason.display",
                                             problems, MAX_TEXT_LENGTH, required=False)
    return reason


def parse_feedback(body: Any, now: datetime) -> list[FeedbackEntry]:
    """The entries of a feedback request, or FeedbackInvalid naming every bad one."""
    if not isinstance(body, dict):
        raise FeedbackInvalid([Problem("body", "must be an object with a feedback array")])
    entries = body.get("feedback")
    if not isinstance(entries, list):
        raise FeedbackInvalid([Problem("feedback", "is required and must be an array")])
    if not entries:
        raise FeedbackInvalid([Problem("feedback", "must have at least one entry")])
    if len(entries) > MAX_ENTRIES:
        raise FeedbackInvalid([Problem("feedback", f"has more than {MAX_ENTRIES} entries; "
                                                   "send them in several requests")])
    problems: list[Problem] = []
    parsed = [_parse_entry(index, entry, now, problems) for index, entry in enumerate(entries)]
    if problems:
        raise FeedbackInvalid(problems)
    return [entry for entry in parsed if entry is not None]


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
