"""Acceptance analytics: cards shown, accepted, overridden and ignored, per service, per tier
(critical, warning, info: the alert burden a committee watches), per factor (rule id), per
override reason and per ISO week.

A card counts once, with the outcome of its latest report (by outcomeTimestamp): a card first
overridden and then accepted is accepted. "Ignored" is a card shown with no feedback at all.
Cards are selected by when they were shown (`since`); their feedback may come later.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa

from cds_service.store.schema import (
    card_feedback,
    early_feedback,
    issued_card,
    issued_card_rule,
    quieted_card,
)
from cds_service.store.store import FeedbackStore

OUTCOMES = ("accepted", "overridden", "ignored")
COMMENT_ONLY = "(comment only)"  # overrides that gave a userComment and no reason Coding


@dataclass
class Counts:
    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    ignored: int = 0

    def add(self, outcome: str, n: int) -> None:
        self.shown += n
        setattr(self, outcome, getattr(self, outcome) + n)

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted among shown (ignored cards count as not accepted)."""
        return self.accepted / self.shown if self.shown else None

    def as_dict(self) -> dict:
        rate = self.acceptance_rate
        return {"shown": self.shown, "accepted": self.accepted, "overridden": self.overridden,
                "ignored": self.ignored,
                "acceptance_rate": round(rate, 4) if rate is not None else None}


@dataclass
class OverrideReason:
    system: str | None
    code: str | None
    display: str | None
    overridden: int = 0

    def as_dict(self) -> dict:
        return {"system": self.system, "code": self.code, "display": self.display,
                "overridden": self.overridden}


@dataclass
class Quieted:
    """Cards not shown because the clinician had overridden one about the same things."""

    total: int = 0
    rules: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict:
        return {"total": self.total, "rules": dict(sorted(self.rules.items()))}


def _counts_by() -> defaultdict[str, Counts]:
    return defaultdict(Counts)


@dataclass
class Week:
    total: Counts = field(default_factory=Counts)
    services: defaultdict[str, Counts] = field(default_factory=_counts_by)
    rules: defaultdict[str, Counts] = field(default_factory=_counts_by)


@dataclass
class Report:
    generated_at: datetime
    since: datetime | None
    total: Counts = field(default_factory=Counts)
    services: defaultdict[str, Counts] = field(default_factory=_counts_by)
    tiers: defaultdict[str, Counts] = field(default_factory=_counts_by)
    rules: defaultdict[str, Counts] = field(default_factory=_counts_by)
    override_reasons: dict[str, OverrideReason] = field(default_factory=dict)
    weeks: defaultdict[str, Week] = field(default_factory=lambda: defaultdict(Week))
    # Feedback that came before its card's record (card_ids.py): moved in once the record came
    # (reconciled), still waiting for it (awaiting: the record was lost, e.g. a killed worker,
    # or is not written yet), or not fitting the card when it came (mismatched).
    reconciliation: dict[str, int] = field(default_factory=lambda: {
        "reconciled": 0, "awaiting_record": 0, "mismatched": 0})
    quieted: Quieted = field(default_factory=Quieted)

    def as_dict(self, labels: dict[str, str] | None = None) -> dict:
        labels = labels or {}

        def table(groups: dict[str, Counts]) -> dict:
            return {key: groups[key].as_dict() for key in sorted(groups)}

        return {
            "generated_at": self.generated_at.isoformat(),
            "since": self.since.isoformat() if self.since else None,
            "total": self.total.as_dict(),
            "services": table(self.services),
            "tiers": table(self.tiers),
            "rules": {key: counts | ({"label": labels[key]} if key in labels else {})
                      for key, counts in table(self.rules).items()},
            "override_reasons": {key: self.override_reasons[key].as_dict()
                                 for key in sorted(self.override_reasons)},
            "feedback_before_record": dict(self.reconciliation),
            "quieted": self.quieted.as_dict(),
            "weeks": {week: {**self.weeks[week].total.as_dict(),
                             "services": table(self.weeks[week].services),
                             "rules": table(self.weeks[week].rules)}
                      for week in sorted(self.weeks)},
        }


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _shown_cards(since: datetime | None) -> sa.Subquery:
    """One row per card shown: its service, day shown, final outcome and override reason."""
    ranked = sa.select(
        card_feedback.c.card_uuid, card_feedback.c.outcome, card_feedback.c.reason_system,
        card_feedback.c.reason_code, card_feedback.c.reason_display,
        sa.func.row_number().over(
            partition_by=card_feedback.c.card_uuid,
            order_by=(card_feedback.c.outcome_at.desc(), card_feedback.c.id.desc()),
        ).label("latest"),
    ).subquery("ranked")
    final = sa.select(ranked).where(ranked.c.latest == 1).subquery("final")
    query = sa.select(
        issued_card.c.card_uuid, issued_card.c.service_id, issued_card.c.indicator,
        sa.func.date(issued_card.c.issued_at).label("day"),
        sa.func.coalesce(final.c.outcome, "ignored").label("outcome"),
        final.c.reason_system, final.c.reason_code, final.c.reason_display,
    ).select_from(issued_card.outerjoin(final, final.c.card_uuid == issued_card.c.card_uuid))
    if since is not None:
        query = query.where(issued_card.c.issued_at >= since)
    return query.subquery("shown")


def _day(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def build_report(store: FeedbackStore, *, since: datetime | None, now: datetime,
                 reason_names: dict[tuple[str, str], str] | None = None) -> Report:
    """Counts aggregated in the database (by day), then folded into ISO weeks here. Override
    reasons of the service's own list are named as it names them (`reason_names`), whatever
    display the EHR sent, or none."""
    reason_names = reason_names or {}
    report = Report(generated_at=now, since=since)
    shown = _shown_cards(since)
    count = sa.func.count().label("n")
    with store.read() as connection:
        for row in connection.execute(
                sa.select(shown.c.service_id, shown.c.day, shown.c.outcome, count)
                .group_by(shown.c.service_id, shown.c.day, shown.c.outcome)):
            week = report.weeks[iso_week(_day(row.day))]
            for counts in (report.total, report.services[row.service_id], week.total,
                           week.services[row.service_id]):
                counts.add(row.outcome, row.n)
        for row in connection.execute(
                sa.select(shown.c.indicator, shown.c.outcome, count)
                .group_by(shown.c.indicator, shown.c.outcome)):
            report.tiers[row.indicator].add(row.outcome, row.n)
        by_rule = shown.join(issued_card_rule, issued_card_rule.c.card_uuid == shown.c.card_uuid)
        for row in connection.execute(
                sa.select(issued_card_rule.c.rule_id, shown.c.day, shown.c.outcome, count)
                .select_from(by_rule)
                .group_by(issued_card_rule.c.rule_id, shown.c.day, shown.c.outcome)):
            report.rules[row.rule_id].add(row.outcome, row.n)
            report.weeks[iso_week(_day(row.day))].rules[row.rule_id].add(row.outcome, row.n)
        for row in connection.execute(
                sa.select(shown.c.reason_system, shown.c.reason_code,
                          sa.func.max(shown.c.reason_display).label("display"), count)
                .where(shown.c.outcome == "overridden")
                .group_by(shown.c.reason_system, shown.c.reason_code)):
            key = f"{row.reason_system}|{row.reason_code}" if row.reason_code else COMMENT_ONLY
            display = reason_names.get((row.reason_system or "", row.reason_code or ""))
            report.override_reasons[key] = OverrideReason(
                row.reason_system, row.reason_code, display or row.display, row.n)
        quieted = sa.select(quieted_card.c.rules)
        if since is not None:
            quieted = quieted.where(quieted_card.c.quieted_at >= since)
        for (rules,) in connection.execute(quieted):
            report.quieted.total += 1
            for rule in rules:
                report.quieted.rules[rule] += 1
        report.reconciliation = {
            "reconciled": connection.execute(
                sa.select(sa.func.count()).select_from(card_feedback)
                .where(card_feedback.c.reconciled_at.is_not(None))).scalar_one(),
            "awaiting_record": connection.execute(
                sa.select(sa.func.count()).select_from(early_feedback)
                .where(early_feedback.c.problem.is_(None))).scalar_one(),
            "mismatched": connection.execute(
                sa.select(sa.func.count()).select_from(early_feedback)
                .where(early_feedback.c.problem.is_not(None))).scalar_one(),
        }
    return report
