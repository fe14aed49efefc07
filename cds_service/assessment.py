"""The clinical assessment: record + knowledge + now -> findings with their evidence.

A pure function with no I/O and no clock: everything it decides can be tested with a hand-built
record and a fixed `now`. The rules are those of docs/clinical.md; the codes, thresholds and
windows come from the knowledge files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .knowledge import Factor, Knowledge, Substitute
from .record import (
    UNRESOLVED_MEDICATION,
    ConditionEntry,
    LabResult,
    Medication,
    PatientRecord,
    ProcedureEntry,
)

# Clock skew tolerated for results and procedures dated slightly in the future.
FUTURE_SKEW = timedelta(hours=1)


@dataclass(frozen=True)
class Evidence:
    """One fact behind a finding: a medicine, a lab result, a diagnosis or the patient's sex."""

    medication: Medication | None = None
    lab: LabResult | None = None
    condition: ConditionEntry | None = None
    sex: str | None = None
    threshold: float | None = None  # in the lab's canonical unit
    uln: float | None = None  # for PTH: the upper limit used
    uln_from_assay: bool = False


@dataclass(frozen=True)
class Finding:
    factor: Factor
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class LabNote:
    """A lab the card should mention though it did not fire: unreadable or not recent."""

    lab: str
    result: LabResult
    note: str  # "unreadable" | "superseded-unreadable"


@dataclass(frozen=True)
class DraftFinding:
    """A draft order of a culprit drug, with what could replace it."""

    order: Medication
    finding: Finding
    substitutes: tuple[Substitute, ...]
    other_drafts: tuple[Medication, ...]


@dataclass
class Assessment:
    in_scope: bool
    scope_reason: str
    scope_evidence: tuple[ConditionEntry | ProcedureEntry, ...] = ()
    findings: list[Finding] = field(default_factory=list)
    known_calciphylaxis: ConditionEntry | None = None
    draft_findings: list[DraftFinding] = field(default_factory=list)
    pth_overdue: bool = False
    lab_notes: list[LabNote] = field(default_factory=list)
    not_counted: list[Medication] = field(default_factory=list)
    # Current orders whose medicine could not be read: said on the card, never guessed.
    unresolved_orders: int = 0

    @property
    def firing(self) -> list[Finding]:
        return [f for f in self.findings if f.factor.fires]

    @property
    def context(self) -> list[Finding]:
        return [f for f in self.findings if not f.factor.fires]

    @property
    def on_culprit_drug(self) -> bool:
        return any(f.factor.culprit_drug for f in self.findings)


def _condition_active(condition: ConditionEntry, knowledge: Knowledge) -> bool:
    if condition.clinical_status is None:
        # US Core requires clinicalStatus; without it, an unabated diagnosis is taken as current.
        return not condition.abated
    return condition.clinical_status in knowledge.statuses.condition_active


def _active_with(record: PatientRecord, knowledge: Knowledge,
                 concept: str) -> list[ConditionEntry]:
    return [c for c in record.conditions
            if concept in c.concepts and _condition_active(c, knowledge)]


def _scope(record: PatientRecord, knowledge: Knowledge, now: datetime):
    """(in scope, reason, evidence) for "on maintenance dialysis"."""
    if record.deceased:
        return False, "deceased", ()
    since = now - timedelta(days=knowledge.dialysis_recency_days)
    recent = sorted(
        (p for p in record.procedures
         if p.concept == "dialysis" and p.performed and since <= p.performed <= now + FUTURE_SKEW),
        key=lambda p: p.performed, reverse=True)
    esrd = _active_with(record, knowledge, "esrd_on_dialysis")
    if recent:
        return True, "dialysis", tuple(esrd[:1]) + (recent[0],)
    if _active_with(record, knowledge, "esrd_untreated"):
        return False, "ESRD not treated by dialysis", ()
    if esrd:
        # An active ESRD or dialysis-dependence diagnosis keeps a transplant recipient in scope
        # (a failed graft, back on dialysis; many EHRs record no dialysis Procedures).
        return True, "diagnosis", tuple(esrd[:1])
    if _active_with(record, knowledge, "kidney_transplant"):
        return False, "kidney transplant, ESRD not active, no dialysis in the last 90 days", ()
    return False, "not on maintenance dialysis", ()


def _medication_current(medication: Medication, now: datetime) -> bool:
    if medication.is_draft or medication.excluded_because:
        return False
    return medication.ends is None or medication.ends >= now


def _lab_finding(factor: Factor, record: PatientRecord, knowledge: Knowledge, now: datetime,
                 notes: list[LabNote]) -> tuple[Finding | None, LabResult | None]:
    """Apply the latest-value rule; returns (finding or None, the latest valid result)."""
    lab = knowledge.labs[factor.lab]
    window_start = now - timedelta(days=lab.window_days)
    results = sorted((r for r in record.labs
                      if r.lab == lab.id and r.effective <= now + FUTURE_SKEW),
                     key=lambda r: r.effective, reverse=True)
    latest = None
    for result in results:
        if result.value is None:
            if result.effective >= window_start:
                notes.append(LabNote(lab.id, result, "unreadable"))
            continue
        latest = result
        break
    if latest is None or latest.effective < window_start:
        return None, None
    value, comparator = latest.value, latest.comparator
    if factor.uln_multiple is not None:
        uln = latest.reference_high or factor.default_uln
        threshold = factor.uln_multiple * uln
        fires = value > threshold and comparator not in ("<", "<=")
        evidence = Evidence(lab=latest, threshold=threshold, uln=uln,
                            uln_from_assay=latest.reference_high is not None)
    elif factor.above is not None:
        threshold = factor.above
        fires = value > threshold and comparator not in ("<", "<=")
        if latest.reported_unit in factor.above_in_unit:
            # The limit as published in the unit reported: no conversion rounding at the edge.
            fires = (float(latest.reported_value) > factor.above_in_unit[latest.reported_unit]
                     and comparator not in ("<", "<="))
        evidence = Evidence(lab=latest, threshold=threshold)
    elif factor.below is not None:
        threshold = factor.below
        fires = value < threshold and comparator not in (">", ">=")
        evidence = Evidence(lab=latest, threshold=threshold)
    else:
        threshold = factor.at_least
        fires = value >= threshold and comparator not in ("<", "<=")
        evidence = Evidence(lab=latest, threshold=threshold)
    return (Finding(factor, (evidence,)) if fires else None), latest


def _findings(record: PatientRecord, knowledge: Knowledge, now: datetime,
              notes: list[LabNote]) -> tuple[list[Finding], bool]:
    """Every factor present, in knowledge order; and whether PTH is overdue."""
    findings: list[Finding] = []
    pth_seen = False
    current = [m for m in record.medications if _medication_current(m, now)]
    factor_of_class = {m.id: m.factor for m in knowledge.medicines}
    for factor in knowledge.factors.values():
        evidence: list[Evidence] = []
        evidence += [Evidence(medication=m) for m in current
                     if factor_of_class.get(m.medicine_class) == factor.id]
        if factor.lab:
            found, latest = _lab_finding(factor, record, knowledge, now, notes)
            if factor.lab == "pth" and latest is not None:
                pth_seen = True
            if found:
                evidence += found.evidence
        if factor.condition:
            evidence += [Evidence(condition=c)
                         for c in _active_with(record, knowledge, factor.condition)]
        if factor.sex and record.sex == factor.sex:
            evidence.append(Evidence(sex=record.sex))
        if evidence:
            findings.append(Finding(factor, tuple(evidence)))
    return findings, not pth_seen


def _draft_findings(record: PatientRecord, knowledge: Knowledge, findings: list[Finding],
                    selections: frozenset[str] | None) -> list[DraftFinding]:
    factor_of_class = {m.id: m.factor for m in knowledge.medicines}
    present = {f.factor.id for f in findings}
    drafts = [m for m in record.medications if m.is_draft and not m.excluded_because]
    judged = []
    for order in drafts:
        if selections is not None and order.reference not in selections:
            continue
        factor = knowledge.factors[factor_of_class[order.medicine_class]]
        if not factor.culprit_drug:
            continue
        substitutes = tuple(
            s for s in knowledge.substitutes
            if order.medicine_class in s.replaces
            and (s.requires_factor is None or s.requires_factor in present))
        others = tuple(m for m in drafts if m is not order)
        judged.append(DraftFinding(order, Finding(factor, (Evidence(medication=order),)),
                                   substitutes, others))
    return judged


def assess(record: PatientRecord, knowledge: Knowledge, now: datetime,
           selections: frozenset[str] | None = None) -> Assessment:
    """Decide scope, risk factors and culprit draft orders for one patient at `now`.

    `selections`: for order-select, the draft orders being judged ("MedicationRequest/id");
    None judges every draft (order-sign).
    """
    in_scope, reason, scope_evidence = _scope(record, knowledge, now)
    if not in_scope:
        return Assessment(in_scope=False, scope_reason=reason)
    notes: list[LabNote] = []
    findings, pth_overdue = _findings(record, knowledge, now, notes)
    calciphylaxis = _active_with(record, knowledge, "calciphylaxis")
    return Assessment(
        in_scope=True,
        scope_reason=reason,
        scope_evidence=scope_evidence,
        findings=findings,
        known_calciphylaxis=calciphylaxis[0] if calciphylaxis else None,
        draft_findings=_draft_findings(record, knowledge, findings, selections),
        pth_overdue=pth_overdue,
        lab_notes=notes,
        not_counted=[m for m in record.medications if m.excluded_because],
        unresolved_orders=sum(u.reason == UNRESOLVED_MEDICATION for u in record.unreadable),
    )
