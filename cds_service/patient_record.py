"""Build the PatientRecord from FHIR resources: select, validate, normalise.

A cheap pass over the raw JSON keeps only resources the rules can use (a current medicine order,
a lab with a known LOINC code, a coded condition or dialysis procedure of the patient); only those
are validated with fhir.resources. A resource that fails validation, belongs to another patient or
carries an unreadable value is listed in `record.unreadable`, never fatal and never guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .assessment import FUTURE_SKEW
from .fhir_read import Unreadable as UnreadableResource
from .fhir_read import belongs_to, codings, concept_text, validate
from .fhir_time import as_utc, parse_instant, period_end, raw_period_end
from .knowledge import Knowledge
from .record import (
    UNRESOLVED_MEDICATION,
    ConditionEntry,
    LabResult,
    Medication,
    PatientRecord,
    ProcedureEntry,
    Unreadable,
)

UCUM = "http://unitsofmeasure.org"
_OLDEST = datetime(1, 1, 1, tzinfo=UTC)


def _coded(concept) -> tuple[tuple[str, str, str], ...]:
    """Codings of a validated CodeableConcept."""
    if concept is None or not concept.coding:
        return ()
    return tuple((c.system or "", c.code or "", c.display or "") for c in concept.coding if c.code)


def _text(concept) -> str:
    if concept is None:
        return ""
    if concept.text:
        return concept.text
    return " ".join(c.display for c in concept.coding or () if c.display)


def _status_code(concept) -> str | None:
    if concept is None or not concept.coding:
        return None
    return concept.coding[0].code


class RecordBuilder:
    """Turns the raw resources of one hook call into a PatientRecord."""

    def __init__(self, knowledge: Knowledge, patient_id: str):
        self.knowledge = knowledge
        self.statuses = knowledge.statuses
        self.loinc = knowledge.systems["loinc"]
        self.patient_id = patient_id
        self.record = PatientRecord(patient_id=patient_id)
        self.medications_by_ref: dict[str, dict] = {}
        self._handlers = {
            "Patient": self._patient,
            "Condition": self._condition,
            "Procedure": self._procedure,
            "Observation": self._observation,
            "MedicationRequest": self._medication_request,
            "MedicationStatement": self._medication_statement,
        }
        self._dialysis_candidates: list[tuple[datetime | None, dict]] = []
        self._lab_candidates: dict[str, list[tuple[datetime | None, dict]]] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _skip(self, resource: dict, reason: str) -> None:
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        rid = resource.get("id") if isinstance(resource, dict) else None
        ref = f"{rtype}/{rid}" if isinstance(rtype, str) and isinstance(rid, str) else None
        self.record.unreadable.append(Unreadable(str(rtype or "unknown"), reason, ref))

    def _validated(self, resource: dict):
        if not belongs_to(resource, self.patient_id):
            self._skip(resource, "belongs to another patient")
            return None
        try:
            return validate(resource)
        except UnreadableResource as exc:
            self._skip(resource, str(exc))
            return None

    @staticmethod
    def _ref(model) -> str:
        rtype = model.get_resource_type()
        return f"{rtype}/{model.id}" if model.id else rtype

    # -- entry point ---------------------------------------------------------------------------
    def add_medication_index(self, resources: Iterable[dict]) -> None:
        """Remember Medication resources so that medicationReference can be resolved."""
        for resource in resources:
            if resource.get("resourceType") == "Medication" and isinstance(resource.get("id"), str):
                self.medications_by_ref[f"Medication/{resource['id']}"] = resource

    def add(self, resource: Any, *, draft: bool = False) -> None:
        if not isinstance(resource, dict):
            self.record.unreadable.append(Unreadable("unknown", "not a JSON object"))
            return
        resource_type = resource.get("resourceType")
        handler = self._handlers.get(resource_type) if isinstance(resource_type, str) else None
        if handler is None:
            return  # Medication (indexed above), OperationOutcome, anything else: not used
        try:
            if draft:
                self._medication_request(resource, draft=True)
            else:
                handler(resource)
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            # A shape the validator let through but our reading did not expect.
            self._skip(resource, f"could not be read ({type(exc).__name__})")

    # -- resource types ------------------------------------------------------------------------
    def _patient(self, resource: dict) -> None:
        if resource.get("id") != self.patient_id:
            self._skip(resource, "belongs to another patient")
            return
        patient = self._validated(resource)
        if patient is None:
            return
        self.record.sex = patient.gender
        self.record.deceased = bool(patient.deceasedBoolean) or patient.deceasedDateTime is not None
        self.record.birth_date = as_utc(patient.birthDate)

    def _condition(self, resource: dict) -> None:
        raw_codings = codings(resource.get("code"))
        raw_text = concept_text(resource.get("code"))
        if not self.knowledge.condition_index.match(raw_codings, raw_text):
            return
        condition = self._validated(resource)
        if condition is None:
            return
        verification = _status_code(condition.verificationStatus)
        if verification in self.statuses.condition_ignored_verification:
            return
        found_codings, text = _coded(condition.code), _text(condition.code)
        hits = self.knowledge.condition_index.match(found_codings, text)
        if not hits:
            return
        concepts, matched = list(hits), list(hits.values())
        self.record.conditions.append(ConditionEntry(
            reference=self._ref(condition),
            concepts=tuple(concepts),
            matched=tuple(matched),
            name=text,
            clinical_status=_status_code(condition.clinicalStatus),
            verification_status=verification,
            onset=as_utc(condition.onsetDateTime) or period_end(condition.onsetPeriod)
            or as_utc(condition.recordedDate),
            abated=any(getattr(condition, f"abatement{k}") is not None
                       for k in ("DateTime", "Age", "Period", "Range", "String")),
        ))

    def _procedure(self, resource: dict) -> None:
        if resource.get("status") not in self.statuses.procedure:
            return
        if not self.knowledge.procedures["dialysis"].match(codings(resource.get("code")), ""):
            return
        when = parse_instant(resource.get("performedDateTime")) or raw_period_end(
            resource.get("performedPeriod"))
        self._dialysis_candidates.append((when, resource))

    def _read_procedure(self, resource: dict) -> bool:
        dialysis = self.knowledge.procedures["dialysis"]
        procedure = self._validated(resource)
        if procedure is None or procedure.status not in self.statuses.procedure:
            return False
        hit = dialysis.match(_coded(procedure.code), "")
        if hit is None:
            return False
        performed = (as_utc(procedure.performedDateTime) or period_end(procedure.performedPeriod)
                     or as_utc(procedure.performedString))
        self.record.procedures.append(ProcedureEntry(
            reference=self._ref(procedure), concept="dialysis", code=hit,
            name=_text(procedure.code), status=procedure.status, performed=performed,
        ))
        return True

    def _observation(self, resource: dict) -> None:
        lab_id = next((self.knowledge.lab_by_loinc[c] for s, c, _d in codings(resource.get("code"))
                       if s == self.loinc and c in self.knowledge.lab_by_loinc), None)
        if lab_id is None or resource.get("status") not in self.statuses.result:
            return
        when = (parse_instant(resource.get("effectiveDateTime"))
                or raw_period_end(resource.get("effectivePeriod"))
                or parse_instant(resource.get("effectiveInstant"))
                or parse_instant(resource.get("issued")))
        self._lab_candidates.setdefault(lab_id, []).append((when, resource))

    def finish(self, as_of: datetime | None) -> None:
        """Validate the dialysis sessions and results the rules can use.

        The rules read only the latest dialysis session and, per lab, the latest readable result
        (with any newer unreadable ones, which the card reports). So candidates are read newest
        first and reading stops there: a chart with 430 dialysis sessions validates one.
        Without `as_of`, everything is read.
        """
        def newest_first(candidates):
            ordered = sorted(candidates, key=lambda c: c[0] or _OLDEST, reverse=True)
            limit = as_of + FUTURE_SKEW if as_of else None
            return [r for when, r in ordered if limit is None or when is None or when <= limit]

        for resource in newest_first(self._dialysis_candidates):
            if self._read_procedure(resource) and as_of is not None:
                break
        for lab_id, candidates in self._lab_candidates.items():
            for resource in newest_first(candidates):
                result = self._read_observation(resource, lab_id)
                if result is not None and result.value is not None and as_of is not None:
                    break

    def _read_observation(self, resource: dict, lab_id: str) -> LabResult | None:
        observation = self._validated(resource)
        if observation is None:
            return None
        loinc = next(c for s, c, _d in _coded(observation.code)
                     if s == self.loinc and c in self.knowledge.lab_by_loinc)
        effective = (as_utc(observation.effectiveDateTime)
                     or period_end(observation.effectivePeriod)
                     or as_utc(observation.effectiveInstant) or as_utc(observation.issued))
        reference = self._ref(observation)
        if effective is None:
            self._skip(resource, f"{lab_id} result without a date")
            return None
        lab = self.knowledge.labs[lab_id]
        quantity = observation.valueQuantity
        if quantity is None or quantity.value is None:
            self.record.labs.append(LabResult(
                reference, lab_id, loinc, None, None, "", "", effective, observation.status,
                unreadable_because="no numeric value"))
            self.record.unreadable.append(
                Unreadable("Observation", f"{lab.label}: no numeric value", reference))
            return self.record.labs[-1]
        unit = self._unit(quantity)
        factor = lab.units.get(unit)
        reported = f"{quantity.value.normalize():f}" if hasattr(quantity.value, "normalize") \
            else str(quantity.value)
        if factor is None:
            self.record.labs.append(LabResult(
                reference, lab_id, loinc, None, quantity.comparator, reported, unit or "",
                effective, observation.status, unreadable_because="unit not recognised"))
            self.record.unreadable.append(Unreadable(
                "Observation", f"{lab.label}: unit not recognised", reference))
            return self.record.labs[-1]
        high = None
        for reference_range in observation.referenceRange or ():
            if reference_range.high is not None and reference_range.high.value is not None:
                high_factor = lab.units.get(self._unit(reference_range.high) or unit)
                if high_factor is not None:
                    high = float(reference_range.high.value) * high_factor
                break
        self.record.labs.append(LabResult(
            reference, lab_id, loinc, float(quantity.value) * factor, quantity.comparator,
            reported, unit, effective, observation.status, reference_high=high))
        return self.record.labs[-1]

    def _unit(self, quantity) -> str:
        unit = quantity.code if quantity.code and quantity.system == UCUM else quantity.unit
        return self.knowledge.canonical_unit(unit or quantity.code or "")

    def _medicine_of(self, holder, raw: dict) -> tuple[tuple, str, str] | None:
        """(codings, name, form text) of the medicine a request or statement is about."""
        if holder.medicationCodeableConcept is not None:
            concept = holder.medicationCodeableConcept
            return _coded(concept), _text(concept), ""
        reference = holder.medicationReference
        if reference is None:
            return None
        ref = reference.reference or ""
        medication = None
        if ref.startswith("#"):
            medication = next((c for c in raw.get("contained") or ()
                               if isinstance(c, dict) and c.get("id") == ref[1:]), None)
        elif ref:
            # "Medication/x", or an absolute URL ending in it (a Bundle entry's fullUrl)
            medication = self.medications_by_ref.get(
                "Medication/" + ref.split("/_history/")[0].rsplit("Medication/", 1)[-1])
        if medication is None:
            if reference.display:
                return (), reference.display, ""
            self._skip(raw, UNRESOLVED_MEDICATION)
            return None
        try:
            model = validate(medication)
        except UnreadableResource as exc:
            self._skip(raw, f"referenced {exc}")
            return None
        form = _text(model.form) if model.form is not None else ""
        return _coded(model.code), _text(model.code) or reference.display or "", form

    def _route_text(self, dosages) -> str:
        """The coded route only: free dosage text ("for uveitis (eye)") says nothing of form."""
        return " ".join(_text(d.route) for d in dosages or () if d.route is not None)

    def _add_medicine(self, model, raw: dict, *, status: str, is_draft: bool, date, ends) -> None:
        medicine = self._medicine_of(model, raw)
        if medicine is None:
            return
        found_codings, name, form = medicine
        dosages = getattr(model, "dosageInstruction", None) or getattr(model, "dosage", None)
        match = self.knowledge.classify_medicine(
            found_codings, name, f"{form} {self._route_text(dosages)}")
        if match is None:
            return
        self.record.medications.append(Medication(
            reference=self._ref(model), name=name or match.ingredient,
            ingredient=match.ingredient, medicine_class=match.medicine_class,
            matched_by=match.matched_by, status=status, is_draft=is_draft, date=date, ends=ends,
            excluded_because=match.excluded_because,
        ))

    def _medication_request(self, resource: dict, draft: bool = False) -> None:
        allowed = (self.statuses.draft_order if draft
                   else self.statuses.current_medication_request)
        if resource.get("status") not in allowed or resource.get("doNotPerform") is True:
            return  # a "do not give" order is the opposite of exposure
        request = self._validated(resource)
        if request is None:
            return
        # Currency is the order's status: dispenseRequest.validityPeriod bounds dispensing
        # (refills), not therapy, so an active order past it is still current.
        self._add_medicine(request, resource, status=request.status, is_draft=draft,
                           date=as_utc(request.authoredOn), ends=None)

    def _medication_statement(self, resource: dict) -> None:
        if resource.get("status") not in self.statuses.current_medication_statement:
            return
        statement = self._validated(resource)
        if statement is None:
            return
        period = statement.effectivePeriod
        self._add_medicine(
            statement, resource, status=statement.status, is_draft=False,
            date=as_utc(statement.effectiveDateTime) or (as_utc(period.start) if period else None)
            or as_utc(statement.dateAsserted),
            ends=as_utc(period.end) if period else None)


def build_record(knowledge: Knowledge, patient_id: str, resources: Iterable[dict],
                 draft_orders: Iterable[dict] = (), known_empty: tuple[str, ...] = (),
                 as_of: datetime | None = None) -> PatientRecord:
    """Normalise the patient's FHIR resources (and the hook's draft orders) into a record.

    `as_of` (the assessment's now) lets the builder skip validating what the rules will not
    read: older dialysis sessions and results superseded by a newer readable one.
    """
    resources = list(resources)
    draft_orders = list(draft_orders)
    builder = RecordBuilder(knowledge, patient_id)
    builder.add_medication_index(r for r in resources + draft_orders if isinstance(r, dict))
    for resource in resources:
        builder.add(resource)
    for order in draft_orders:
        if isinstance(order, dict) and order.get("resourceType") == "MedicationRequest":
            builder.add(order, draft=True)
    builder.finish(as_of)
    builder.record.known_empty = known_empty
    # The same data gives the same card, whatever order prefetch or a FHIR search used.
    builder.record.medications.sort(key=lambda m: (m.is_draft, "" if m.is_draft else m.reference))
    builder.record.conditions.sort(key=lambda c: c.reference)
    return builder.record
