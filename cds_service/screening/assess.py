"""One patient's lines -> the same record and assessment as a patient-view call -> an outcome.

The clinical knowledge and card wording are loaded once per worker process (a Dask worker runs
many partitions); nothing here reads a clock: `as_of` is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import orjson

from cds_service.cards.writer import CardTemplates, CardWriter
from cds_service.clinical.assessment import (
    Assessment,
    Evidence,
    assess,
    current_classes,
    latest_result,
)
from cds_service.clinical.record import PatientRecord
from cds_service.clinical.record_builder import build_record
from cds_service.fhir.read import as_list, medication_reference
from cds_service.knowledge import Knowledge, load_knowledge

# The identifier that is the medical record number: type MR of HL7 v2 table 0203 (US Core), or,
# without a type, a system named for it (".../mrn").
MRN_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR")
MRN_SYSTEM_HINT = "mrn"
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")


@dataclass(frozen=True)
class Clinical:
    knowledge: Knowledge
    writer: CardWriter


@lru_cache(maxsize=4)
def clinical(knowledge_dir: str | None, cards_dir: str | None) -> Clinical:
    """The knowledge and the card wording, once per process."""
    knowledge = load_knowledge(Path(knowledge_dir) if knowledge_dir else None)
    templates = CardTemplates.load(Path(cards_dir) if cards_dir else None)
    return Clinical(knowledge, CardWriter(knowledge, templates))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the screen keeps of one assessed patient: a worklist row when a card would show,
    and the few facts the report plots (no identifiers outside `row`)."""

    in_scope: bool
    tier: str | None
    factors: tuple[str, ...]  # present factor ids (firing and context)
    pth_multiple: float | None
    medicine_classes: tuple[str, ...]
    unreadable_lines: int
    row: dict | None


def _mrn(patient: dict | None) -> str:
    if not patient:
        return ""
    for identifier in as_list(patient.get("identifier")):
        if not isinstance(identifier, dict):
            continue
        kind = identifier.get("type")
        codes = [(c.get("system"), c.get("code")) for c in as_list(
            kind.get("coding") if isinstance(kind, dict) else None) if isinstance(c, dict)]
        if MRN_TYPE in codes or (MRN_TYPE[1] in (c for _s, c in codes)):
            return str(identifier.get("value") or "")
    for identifier in as_list(patient.get("identifier")):
        if isinstance(identifier, dict) and MRN_SYSTEM_HINT in str(
                identifier.get("system") or "").lower():
            return str(identifier.get("value") or "")
    return ""


def _day(value: datetime | None) -> str:
    return value.date().isoformat() if value else ""


def _number(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def evidence_of(ev: Evidence, knowledge: Knowledge) -> dict:
    """One fact behind a factor, as data: a medicine with its date, a result with its value,
    unit, date and the threshold it crossed (in the lab's canonical unit)."""
    if ev.medication is not None:
        m = ev.medication
        return {"kind": "medication", "drug": m.name, "ingredient": m.ingredient,
                "source": m.kind, "status": m.status, "date": _day(m.date)}
    if ev.lab is not None:
        lab = ev.lab
        return {"kind": "lab", "lab": lab.lab, "label": knowledge.labs[lab.lab].label,
                "value": lab.reported_value,
                "unit": lab.reported_unit, "canonical_value": _number(lab.value),
                "canonical_unit": knowledge.labs[lab.lab].canonical_unit,
                "date": _day(lab.effective), "threshold": _number(ev.threshold),
                "comparison": ev.criterion.comparison if ev.criterion else "",
                "uln": _number(ev.uln)}
    if ev.condition is not None:
        c = ev.condition
        return {"kind": "condition", "name": c.name or ", ".join(c.matched),
                "date": _day(c.onset or c.recorded), "certainty": c.certainty}
    return {"kind": "sex", "sex": ev.sex}


def evidence_text(ev: dict) -> str:
    if ev["kind"] == "medication":
        date = f", {ev['date']}" if ev["date"] else ""
        return f"{ev['drug']} ({ev['source']} {ev['status']}{date})"
    if ev["kind"] == "lab":
        sign = {"above": ">", "below": "<"}.get(ev["comparison"], ">=")
        return (f"{ev['label']} {ev['value']} {ev['unit']} on {ev['date']} "
                f"({sign} {ev['threshold']:g} {ev['canonical_unit']})")
    if ev["kind"] == "condition":
        return f"{ev['name']}{', ' + ev['date'] if ev['date'] else ''}"
    return str(ev.get("sex", ""))


def pth_multiple(record: PatientRecord, knowledge: Knowledge, as_of: datetime) -> float | None:
    """The latest readable PTH within its window as a multiple of its upper limit of normal."""
    _factor, criterion = knowledge.criterion_for("pth")
    latest = latest_result(record, knowledge, "pth", as_of)
    if latest is None or latest.value is None:
        return None
    return latest.value / (latest.reference_high or criterion.default_uln)


def _row(patient_id: str, patient: dict | None, assessment: Assessment, multiple: float | None,
         clinical_: Clinical) -> dict:
    knowledge = clinical_.knowledge
    actions = {k: _MARKDOWN_ESCAPE.sub(r"\1", v)
               for k, v in clinical_.writer.factor_actions(assessment).items()}
    factors = [{"factor": f.factor.id, "label": f.factor.label, "modifiable": f.factor.fires,
                "evidence": [evidence_of(e, knowledge) for e in f.evidence],
                "action": actions.get(f.factor.id, "")} for f in assessment.findings]
    return {
        "tier": assessment.tier,
        "patient_id": patient_id,
        "mrn": _mrn(patient),
        "modifiable_factors": len(assessment.firing),
        "pth_multiple": _number(multiple),
        "scope": assessment.scope_reason,
        "calciphylaxis": (assessment.known_calciphylaxis.certainty
                          if assessment.known_calciphylaxis else ""),
        "pth_overdue": assessment.pth_overdue,
        "warnings": [p.id for p in assessment.pairings],
        "factors": factors,
    }


def assess_patient(patient_id: str, lines: list[bytes], medications: dict[str, bytes],
                   as_of: datetime, clinical_: Clinical) -> Outcome:
    """Parse one patient's lines, add the Medications its orders name, and assess it."""
    resources, unreadable, patient = [], 0, None
    for line in lines:
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            unreadable += 1
            continue
        resources.append(resource)
        if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
            patient = resource
    named = {ref for r in resources if isinstance(r, dict)
             if (ref := medication_reference(r.get("medicationReference"))) in medications}
    resources += [orjson.loads(medications[ref]) for ref in sorted(named)]
    knowledge = clinical_.knowledge
    record = build_record(knowledge, patient_id, resources, as_of=as_of)
    assessment = assess(record, knowledge, as_of)
    multiple = pth_multiple(record, knowledge, as_of) if assessment.in_scope else None
    classes = tuple(sorted(current_classes(record, knowledge, as_of))) \
        if assessment.in_scope else ()
    row = _row(patient_id, patient, assessment, multiple, clinical_) \
        if assessment.tier is not None else None
    return Outcome(assessment.in_scope, assessment.tier,
                   tuple(f.factor.id for f in assessment.findings), multiple, classes,
                   unreadable, row)
