"""The clinical assessment: record + knowledge + now -> findings with their evidence.

A pure function with no I/O and no clock: everything it decides can be tested with a hand-built
record and a fixed `now`. The rules are those of docs/clinical.md; the codes, thresholds and
windows come from the knowledge files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cds_service.clinical.record import (
    UNRESOLVED_MEDICATION,
    ConditionEntry,
    LabResult,
    Medication,
    PatientRecord,
    ProcedureEntry,
)
from cds_service.knowledge import (
    CONFIRMED,
    PRIOR,
    SUSPECTED,
    Factor,
    Knowledge,
    LabCriterion,
    Substitute,
)
from cds_service.knowledge.model import Pairing

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
    criterion: LabCriterion | None = None  # the limit a lab result was held to


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


CRITICAL, WARNING, INFO = "critical", "warning", "info"


@dataclass(frozen=True)
class Suggestion:
    """A substitute to offer: instead of an order (replace) or beside it (add)."""

    substitute: Substitute
    replaces: Medication | None  # the order it replaces (deleted), None for an addition


@dataclass(frozen=True)
class DraftFinding:
    """A draft order of a culprit drug, tiered with the draft counted as present."""

    order: Medication
    finding: Finding
    suggestions: tuple[Suggestion, ...]
    other_drafts: tuple[Medication, ...]
    tier: str
    pairings: tuple[Pairing, ...]  # the warnings that hold with this draft
    # A calcium binder drafted while phosphate is below target: reduce or stop it, no swap.
    phosphate_low: LabResult | None = None

    @property
    def substitutes(self) -> tuple[Substitute, ...]:
        return tuple(s.substitute for s in self.suggestions)


@dataclass
class Assessment:
    in_scope: bool
    scope_reason: str
    patient_id: str = ""
    scope_evidence: tuple[ConditionEntry | ProcedureEntry, ...] = ()
    findings: list[Finding] = field(default_factory=list)
    known_calciphylaxis: ConditionEntry | None = None
    draft_findings: list[DraftFinding] = field(default_factory=list)
    pth_overdue: bool = False
    lab_notes: list[LabNote] = field(default_factory=list)
    not_counted: list[Medication] = field(default_factory=list)
    # Current orders whose medicine could not be read: said on the card, never guessed.
    unresolved_orders: int = 0
    # Prefetch keys that were neither sent nor readable (optional evidence): said on the card.
    unavailable_data: tuple[str, ...] = ()
    # patient-view: the card's tier (None: no card) and the warnings that hold.
    tier: str | None = None
    pairings: tuple[Pairing, ...] = ()
    suggestions: tuple[Suggestion, ...] = ()
    # Conditions that change the advice: no "a DOAC may be used" with these.
    doac_contraindications: tuple[ConditionEntry, ...] = ()
    phosphate_low: LabResult | None = None
    transplanted: bool = False  # a kidney transplant is on record (the card says what that means)

    @property
    def firing(self) -> list[Finding]:
        return [f for f in self.findings if f.factor.fires]

    @property
    def context(self) -> list[Finding]:
        return [f for f in self.findings if not f.factor.fires]

    @property
    def on_culprit_drug(self) -> bool:
        return any(f.factor.culprit_drug for f in self.findings)

    @property
    def present(self) -> frozenset[str]:
        return frozenset(f.factor.id for f in self.findings)

    def finding(self, factor_id: str) -> Finding | None:
        return next((f for f in self.findings if f.factor.id == factor_id), None)


def _condition_active(condition: ConditionEntry, knowledge: Knowledge) -> bool:
    if condition.clinical_status is None:
        # US Core requires clinicalStatus; without it, an unabated diagnosis is taken as current.
        return not condition.abated
    return condition.clinical_status in knowledge.statuses.condition_active


def _active_with(record: PatientRecord, knowledge: Knowledge,
                 concept: str) -> list[ConditionEntry]:
    return [c for c in record.conditions
            if concept in c.concepts and _condition_active(c, knowledge)]


def _events(record: PatientRecord, concept: str,
            now: datetime) -> list[tuple[datetime, ProcedureEntry]]:
    """Dated dialysis sessions or transplants up to now, newest first: (performed, procedure)."""
    return sorted(((p.performed, p) for p in record.procedures
                   if p.concept == concept and p.performed and p.performed <= now + FUTURE_SKEW),
                  key=lambda dated: dated[0], reverse=True)


def _transplant(record: PatientRecord, knowledge: Knowledge,
                now: datetime) -> tuple[datetime | None, ProcedureEntry | ConditionEntry] | None:
    """The newest kidney transplant (a procedure, or a transplant status on the problem list):
    (date or None when undated, evidence), or None."""
    dated: list[tuple[datetime, ProcedureEntry | ConditionEntry]] = list(
        _events(record, "kidney_transplant", now))
    undated = None
    for condition in _active_with(record, knowledge, "kidney_transplant"):
        when = condition.onset or condition.recorded
        if when is None:
            undated = condition
        elif when <= now + FUTURE_SKEW:
            dated.append((when, condition))
    if dated:
        return max(dated, key=lambda d: d[0])
    return (None, undated) if undated is not None else None


def _scope(record: PatientRecord, knowledge: Knowledge,
           now: datetime) -> tuple[bool, str, tuple[ConditionEntry | ProcedureEntry, ...]]:
    """(in scope, reason, evidence) for "on maintenance dialysis" (clinical.md "Who is in scope"
    and "Dialysis scope, refined")."""
    if record.deceased:
        return False, "deceased", ()
    rules = knowledge.scope
    sessions = _events(record, "dialysis", now)
    esrd = _active_with(record, knowledge, "esrd_on_dialysis")
    dependence = _active_with(record, knowledge, "dialysis_dependence")
    transplant = _transplant(record, knowledge, now)
    if transplant is not None:
        # A kidney transplant ends dialysis scope, even with N18.6 still on the problem list,
        # unless dialysis goes on after it (graft failure: a session in the last 14 days) or
        # dialysis dependence is recorded after it. Dialysis for delayed graft function that
        # stopped after the transplant does not count.
        when, _evidence = transplant
        since = now - timedelta(days=rules.graft_failure_dialysis_days)
        ongoing = [p for performed, p in sessions
                   if performed >= since and (when is None or performed > when)]
        if ongoing:
            return True, "dialysis after kidney transplant", tuple(esrd[:1]) + (ongoing[0],)
        again = [c for c in dependence if when is None or (c.recorded or c.onset or when) > when]
        if again:
            return True, "dialysis dependence after kidney transplant", tuple(again[:1])
        return False, "kidney transplant, no dialysis since", ()
    recent = [p for performed, p in sessions
              if performed >= now - timedelta(days=rules.dialysis_recency_days)]
    if recent and all((p.system, p.code) in rules.ambiguous_dialysis_codes for p in recent) \
            and _active_with(record, knowledge, "acute_kidney_injury") and not esrd \
            and not dependence:
        # CPT 90945/90947 also bill acute continuous therapy: with an acute kidney injury and
        # no chronic diagnosis, that is acute dialysis, not maintenance.
        return False, "acute dialysis for acute kidney injury", ()
    if recent:
        return True, "dialysis", tuple(esrd[:1]) + (recent[0],)
    if _active_with(record, knowledge, "esrd_untreated"):
        return False, "ESRD not treated by dialysis", ()
    if esrd:
        return True, "diagnosis", tuple(esrd[:1])
    return False, "not on maintenance dialysis", ()


def _medication_current(medication: Medication, now: datetime, knowledge: Knowledge) -> bool:
    if medication.is_draft or medication.excluded_because:
        return False
    if medication.kind == "administration":
        # A dose given counts as current use while it is recent.
        since = now - timedelta(days=knowledge.administration_recency_days)
        return medication.date is not None and since <= medication.date <= now + FUTURE_SKEW
    return medication.ends is None or medication.ends >= now


def _reported_number(result: LabResult) -> float:
    return float(result.reported_value.lstrip("<>="))


def _meets(criterion: LabCriterion, result: LabResult, threshold: float) -> bool:
    """Whether a result meets a criterion. A comparator makes the value a bound: ">2500" is
    above any limit below 2500; "<50" is never high (and ">" never low). An unreadable value
    meets nothing."""
    value, comparator = result.value, result.comparator
    if result.reported_unit in criterion.in_unit and criterion.uln_multiple is None:
        # The limit as published in the unit reported: no conversion rounding at the edge.
        value, threshold = _reported_number(result), criterion.in_unit[result.reported_unit]
    if value is None:
        return False
    if criterion.comparison == "above":
        if comparator in ("<", "<="):
            return False
        return value >= threshold if comparator == ">" else value > threshold
    if criterion.comparison == "below":
        if comparator in (">", ">="):
            return False
        return value <= threshold if comparator == "<" else value < threshold
    return comparator not in ("<", "<=") and value >= threshold  # at least


def _lab_finding(criterion: LabCriterion, record: PatientRecord, knowledge: Knowledge,
                 now: datetime, notes: list[LabNote]) -> tuple[Evidence | None, LabResult | None]:
    """Apply the latest-value rule; returns (evidence or None, the latest valid result)."""
    lab = knowledge.labs[criterion.lab]
    window_start = now - timedelta(days=lab.window_days)
    results = sorted((r for r in record.labs
                      if r.lab == lab.id and r.effective <= now + FUTURE_SKEW),
                     key=lambda r: r.effective, reverse=True)
    latest = None
    for result in results:
        if result.value is None:
            if result.effective >= window_start and not any(n.result is result for n in notes):
                notes.append(LabNote(lab.id, result, "unreadable"))
            continue
        latest = result
        break
    if latest is None or latest.effective < window_start:
        return None, None
    threshold, uln = criterion.limit(latest.reference_high)
    if uln is not None:
        evidence = Evidence(lab=latest, threshold=threshold, uln=uln,
                            uln_from_assay=latest.reference_high is not None,
                            criterion=criterion)
    else:
        evidence = Evidence(lab=latest, threshold=threshold, criterion=criterion)
    return (evidence if _meets(criterion, latest, threshold) else None), latest


def _conditions_for(factor: Factor, record: PatientRecord, knowledge: Knowledge,
                    now: datetime) -> list[ConditionEntry]:
    """The diagnoses that make a factor present, as the factor's `condition_when` says."""
    found = [c for c in record.conditions if factor.condition in c.concepts]
    if factor.condition_when == "prior":
        # A resolved or inactive episode, or one the chart words as past ("history of").
        return [c for c in found if c.certainty == PRIOR or (
            c.certainty == CONFIRMED and not _condition_active(c, knowledge))]
    found = [c for c in found if _condition_active(c, knowledge)
             and c.certainty in (CONFIRMED, SUSPECTED)]
    if factor.condition_when == "recent":
        since = now - timedelta(days=factor.recent_days or 0)
        found = [c for c in found
                 if (when := c.onset or c.recorded) and since <= when <= now + FUTURE_SKEW]
    return found


def _findings(record: PatientRecord, knowledge: Knowledge, now: datetime,
              notes: list[LabNote]) -> tuple[list[Finding], bool]:
    """Every factor present, in knowledge order; and whether PTH is overdue."""
    findings: list[Finding] = []
    pth_seen = False
    current = [m for m in record.medications if _medication_current(m, now, knowledge)]
    factor_of_class = {m.id: m.factor for m in knowledge.medicines.classes}
    for factor in knowledge.factors.values():
        evidence: list[Evidence] = []
        evidence += [Evidence(medication=m) for m in current
                     if factor_of_class.get(m.medicine_class) == factor.id]
        for criterion in factor.labs:
            found, latest = _lab_finding(criterion, record, knowledge, now, notes)
            if criterion.lab == "pth" and latest is not None:
                pth_seen = True
            if found:
                evidence.append(found)
        if factor.condition:
            evidence += [Evidence(condition=c)
                         for c in _conditions_for(factor, record, knowledge, now)]
        if factor.sex and record.sex == factor.sex:
            evidence.append(Evidence(sex=record.sex))
        if evidence:
            findings.append(Finding(factor, tuple(evidence)))
    return findings, not pth_seen


def _known_calciphylaxis(record: PatientRecord, knowledge: Knowledge) -> ConditionEntry | None:
    """An active calciphylaxis, confirmed or suspected (culprit drugs are stopped on suspicion);
    a confirmed one is named before a suspected one."""
    current = [c for c in _active_with(record, knowledge, "calciphylaxis")
               if c.certainty in (CONFIRMED, SUSPECTED)]
    current.sort(key=lambda c: c.certainty != CONFIRMED)
    return current[0] if current else None


def _latest(record: PatientRecord, knowledge: Knowledge, lab_id: str,
            now: datetime) -> LabResult | None:
    """The newest readable result of a lab within its window."""
    since = now - timedelta(days=knowledge.labs[lab_id].window_days)
    results = [r for r in record.labs if r.lab == lab_id and r.value is not None
               and since <= r.effective <= now + FUTURE_SKEW]
    return max(results, key=lambda r: r.effective) if results else None


# Public for population screening: the PTH multiple it ranks and plots by, and the medication
# mix it reports, are read the same way as the cards read them.
latest_result = _latest


def _current_classes(record: PatientRecord, knowledge: Knowledge,
                     now: datetime) -> dict[str, list[Medication]]:
    """medicine class -> the current medicines of it (all classes, risk or not)."""
    classes: dict[str, list[Medication]] = {}
    for medication in record.medications:
        if _medication_current(medication, now, knowledge):
            classes.setdefault(medication.medicine_class, []).append(medication)
    return classes


current_classes = _current_classes


def _cinacalcet_safe(record: PatientRecord, knowledge: Knowledge, now: datetime,
                     classes: dict[str, list[Medication]]) -> bool:
    """Cinacalcet is offered only when calcium is known and high enough, and no calcimimetic
    is already taken (its label: do not start below 8.4 mg/dL)."""
    gates = knowledge.gates
    if any(classes.get(c) for c in gates.cinacalcet_not_taking):
        return False
    for criterion in gates.cinacalcet_calcium:
        latest = _latest(record, knowledge, criterion.lab, now)
        if latest is not None:
            return _meets(criterion, latest, criterion.limit()[0])
    return False


def _phosphate_low(record: PatientRecord, knowledge: Knowledge, now: datetime) -> LabResult | None:
    criterion = knowledge.gates.phosphate_below
    latest = _latest(record, knowledge, criterion.lab, now)
    return latest if latest is not None and _meets(criterion, latest, criterion.limit()[0]) \
        else None


def _already_taken(substitute: Substitute, classes: dict[str, list[Medication]]) -> bool:
    names = {m.ingredient.lower() for meds in classes.values() for m in meds}
    return bool(names & {n.lower() for n in substitute.same_as})


def _suggestions(medicine_class: str, order: Medication | None, present: frozenset[str],
                 knowledge: Knowledge, classes: dict[str, list[Medication]],
                 cinacalcet_safe: bool,
                 phosphate_low: LabResult | None) -> tuple[Suggestion, ...]:
    """What is safe to offer for a medicine of this class: replacements (none while phosphate is
    low, none the patient already takes) and additions (gated)."""
    offered = []
    for substitute in knowledge.substitutes:
        if substitute.requires_factor and substitute.requires_factor not in present:
            continue
        if _already_taken(substitute, classes):
            continue
        if substitute.gate == "cinacalcet" and not cinacalcet_safe:
            continue
        if medicine_class in substitute.replaces and order is not None and phosphate_low is None:
            offered.append(Suggestion(substitute, order))
        elif medicine_class in substitute.adds_to:
            offered.append(Suggestion(substitute, None))
    return tuple(offered)


def _tier(present: frozenset[str], knowledge: Knowledge, *, in_scope: bool,
          known: ConditionEntry | None,
          culprits: frozenset[str]) -> tuple[str | None, tuple[Pairing, ...]]:
    """(tier, warnings that hold) for a set of present factors (clinical.md tiers)."""
    if known is not None and culprits & present:
        return CRITICAL, ()  # in or out of dialysis scope: the diagnosis is the risk
    if not in_scope:
        return None, ()
    modifiable = frozenset(f for f in present if knowledge.factors[f].fires)
    holding = tuple(p for p in knowledge.warnings if p.holds(present, modifiable, culprits))
    if holding:
        return WARNING, holding
    return (INFO if modifiable else None), ()


def _draft_findings(record: PatientRecord, knowledge: Knowledge, findings: list[Finding],
                    selections: frozenset[str] | None, *, in_scope: bool,
                    known: ConditionEntry | None, culprits: frozenset[str],
                    classes: dict[str, list[Medication]],
                    cinacalcet_safe: bool, phosphate_low: LabResult | None) -> list[DraftFinding]:
    factor_of_class = {m.id: m.factor for m in knowledge.medicines.classes}
    present = frozenset(f.factor.id for f in findings)
    drafts = [m for m in record.medications if m.is_draft and not m.excluded_because]
    judged = []
    for order in drafts:
        if selections is not None and order.reference not in selections:
            continue
        factor_id = factor_of_class.get(order.medicine_class)
        factor = knowledge.factors[factor_id] if factor_id else None
        if factor is None or not factor.culprit_drug:
            continue
        with_draft = present | {factor.id}  # the drug being ordered counts as present
        tier, pairings = _tier(with_draft, knowledge, in_scope=in_scope, known=known,
                               culprits=culprits)
        if tier is None:
            continue
        # An order card warns about the drug being ordered: only the warnings it takes part in
        # count (a binder with high PTH does not make a calcitriol order a warning).
        pairings = tuple(p for p in pairings if p.involves(factor))
        if tier == WARNING and not pairings:
            tier = INFO
        is_binder_swap = any(order.medicine_class in s.replaces for s in knowledge.substitutes)
        suggestions = _suggestions(order.medicine_class, order if "/" in order.reference
                                   else None, with_draft, knowledge, classes, cinacalcet_safe,
                                   phosphate_low)
        others = tuple(m for m in drafts if m is not order)
        judged.append(DraftFinding(order, Finding(factor, (Evidence(medication=order),)),
                                   suggestions, others, tier, pairings,
                                   phosphate_low if is_binder_swap else None))
    return judged


def assess(record: PatientRecord, knowledge: Knowledge, now: datetime,
           selections: frozenset[str] | None = None) -> Assessment:
    """Decide scope, risk factors, tiers and what to suggest for one patient at `now`.

    `selections`: for order-select, the draft orders being judged ("MedicationRequest/id");
    None judges every draft (order-sign).
    """
    in_scope, reason, scope_evidence = _scope(record, knowledge, now)
    known = _known_calciphylaxis(record, knowledge) if not record.deceased else None
    if not in_scope and known is None:
        return Assessment(in_scope=False, scope_reason=reason, patient_id=record.patient_id)
    notes: list[LabNote] = []
    findings, pth_overdue = _findings(record, knowledge, now, notes)
    pth_overdue = pth_overdue and in_scope  # KDIGO's PTH interval is for CKD G5D
    culprits = frozenset(f.id for f in knowledge.factors.values() if f.culprit_drug)
    present = frozenset(f.factor.id for f in findings)
    tier, pairings = _tier(present, knowledge, in_scope=in_scope, known=known,
                           culprits=culprits)
    if tier is None and in_scope and pth_overdue:
        tier = INFO  # nothing modifiable, but PTH is overdue: KDIGO asks for it every 3-6 months
    classes = _current_classes(record, knowledge, now)
    cinacalcet_safe = _cinacalcet_safe(record, knowledge, now, classes)
    phosphate_low = _phosphate_low(record, knowledge, now)
    suggestions: list[Suggestion] = []
    if in_scope and tier in (WARNING, INFO):
        for medicine_class, medications in classes.items():
            orders: list[Medication | None] = [
                m for m in medications if m.kind == "order" and "/" in m.reference]
            for order in orders[:1] or [None]:
                suggestions += _suggestions(medicine_class, order, present, knowledge, classes,
                                            cinacalcet_safe, phosphate_low)
    return Assessment(
        in_scope=in_scope,
        scope_reason=reason,
        patient_id=record.patient_id,
        scope_evidence=scope_evidence,
        findings=findings,
        known_calciphylaxis=known,
        draft_findings=_draft_findings(record, knowledge, findings, selections,
                                       in_scope=in_scope, known=known, culprits=culprits,
                                       classes=classes, cinacalcet_safe=cinacalcet_safe,
                                       phosphate_low=phosphate_low),
        pth_overdue=pth_overdue,
        lab_notes=notes,
        not_counted=[m for m in record.medications if m.excluded_because],
        unresolved_orders=sum(u.reason == UNRESOLVED_MEDICATION for u in record.unreadable),
        unavailable_data=record.unavailable,
        tier=tier,
        pairings=pairings,
        suggestions=tuple(dict.fromkeys(suggestions)),
        doac_contraindications=tuple(_active_with(record, knowledge,
                                                  knowledge.gates.doac_condition)),
        phosphate_low=phosphate_low if "calcium_binder" in present else None,
        transplanted=_transplant(record, knowledge, now) is not None,
    )
