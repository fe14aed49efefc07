"""Made-up shown cards and feedback for the store, endpoint and report tests.

`generate_history` writes a history whose counts per service, factor, override reason and ISO
week are known in advance (returned as `Expected`), so the report can be checked number by
number.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cds_service.feedback.submit import submit_feedback
from cds_service.feedback.validation import FeedbackEntry
from cds_service.store.store import FeedbackStore, ShownCard

SERVICES = {
    "calciphylaxis-patient-view": "patient-view",
    "calciphylaxis-order-select": "order-select",
    "calciphylaxis-order-sign": "order-sign",
}
RULES = ("vitamin_k_antagonist", "calcium_binder", "active_vitamin_d", "high_pth",
         "known_calciphylaxis")
REASON_SYSTEM = "urn:calciphylaxis-cds:override-reason"
REASONS = {"benefit-outweighs-risk": "Benefit outweighs calciphylaxis risk",
           "reviewed-by-nephrology": "Already reviewed with nephrology"}
COMMENT_ONLY = "comment only"  # an override with a userComment and no reason Coding


def shown_card(service_id: str = "calciphylaxis-order-sign", *, rules=("vitamin_k_antagonist",),
               suggestions: int = 2, issued_at: datetime | None = None,
               patient: str = "0123456789abcdef", indicator: str = "warning") -> ShownCard:
    return ShownCard(
        card_uuid=str(uuid.uuid4()), service_id=service_id, hook=SERVICES[service_id],
        hook_instance=str(uuid.uuid4()), indicator=indicator,
        selection_behavior="at-most-one" if suggestions else None, patient_pseudonym=patient,
        issued_at=issued_at or datetime(2026, 11, 20, 12, tzinfo=UTC), rules=tuple(rules),
        suggestion_uuids=tuple(str(uuid.uuid4()) for _ in range(suggestions)))


def counts() -> Counter:
    return Counter(shown=0, accepted=0, overridden=0, ignored=0)


@dataclass
class Expected:
    services: dict[str, Counter] = field(default_factory=lambda: defaultdict(counts))
    tiers: dict[str, Counter] = field(default_factory=lambda: defaultdict(counts))
    rules: dict[str, Counter] = field(default_factory=lambda: defaultdict(counts))
    reasons: Counter = field(default_factory=Counter)  # reason code (or COMMENT_ONLY) -> n
    weeks: dict[str, Counter] = field(default_factory=lambda: defaultdict(counts))
    week_services: dict[tuple[str, str], Counter] = field(
        default_factory=lambda: defaultdict(counts))

    def add(self, card: ShownCard, outcome: str, reason: str | None) -> None:
        year, week, _ = card.issued_at.isocalendar()
        groups = [self.services[card.service_id], self.tiers[card.indicator],
                  self.weeks[f"{year}-W{week:02d}"],
                  self.week_services[(f"{year}-W{week:02d}", card.service_id)]]
        groups += [self.rules[rule] for rule in card.rules]
        for group in groups:
            group["shown"] += 1
            group[outcome] += 1
        if outcome == "overridden":
            self.reasons[reason] += 1


def generate_history(store: FeedbackStore, *, seed: int = 7, cards: int = 240,
                     start: datetime = datetime(2026, 9, 7, 8, tzinfo=UTC),
                     weeks: int = 8) -> Expected:
    """Cards over `weeks` ISO weeks from `start` (a Monday), each accepted, overridden (for
    one of two reasons or a comment only) or ignored; some with a second, earlier report that
    the last one supersedes, and some reported twice (stored once)."""
    rng = random.Random(seed)
    expected = Expected()
    shown: list[ShownCard] = []
    entries: dict[str, list[FeedbackEntry]] = defaultdict(list)
    for _ in range(cards):
        service_id = rng.choice(list(SERVICES))
        rules = tuple(rng.sample(RULES[:4], rng.choice((1, 1, 2))))
        if rng.random() < 0.15:
            rules += ("known_calciphylaxis",)
        issued_at = start + timedelta(minutes=rng.randrange(weeks * 7 * 24 * 60))
        indicator = "critical" if "known_calciphylaxis" in rules else rng.choice(
            ("warning", "info"))
        card = shown_card(service_id, rules=rules, suggestions=0 if service_id.endswith(
            "patient-view") else 2, issued_at=issued_at, indicator=indicator)
        shown.append(card)
        outcome = rng.choice(("accepted", "overridden", "ignored"))
        reason = rng.choice([*REASONS, COMMENT_ONLY]) if outcome == "overridden" else None
        expected.add(card, outcome, reason)
        if outcome == "ignored":
            continue
        at = issued_at + timedelta(minutes=rng.randrange(1, 600))
        final = _entry(card, outcome, reason, at)
        if rng.random() < 0.2:  # an earlier, different report that the final one supersedes
            earlier = "overridden" if outcome == "accepted" else "accepted"
            entries[service_id].append(_entry(card, earlier, "benefit-outweighs-risk",
                                              at - timedelta(seconds=30)))
        entries[service_id].append(final)
        if rng.random() < 0.2:
            entries[service_id].append(final)  # the same report twice: stored once
    store.record_shown(shown)
    for service_id, service_entries in entries.items():
        for first in range(0, len(service_entries), 25):
            submit_feedback(store, service_id, service_entries[first:first + 25],
                            client_iss=None, received_at=datetime.now(UTC))
    return expected


def _entry(card: ShownCard, outcome: str, reason: str | None, at: datetime) -> FeedbackEntry:
    if outcome == "accepted":
        return FeedbackEntry(0, card.card_uuid, outcome, at, card.suggestion_uuids[:1])
    if reason == COMMENT_ONLY:
        return FeedbackEntry(0, card.card_uuid, outcome, at, user_comment="seen by the team")
    return FeedbackEntry(0, card.card_uuid, outcome, at, reason_system=REASON_SYSTEM,
                         reason_code=reason, reason_display=REASONS[reason])
