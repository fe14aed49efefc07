"""Build the PatientRecord from FHIR resources: select, validate, normalise.

A cheap pass over the raw JSON keeps only resources the rules can use: a current medicine of a
risk class (matched by code, ingredient or brand before anything is validated: most orders on a
chart match none), a lab with a known LOINC code, a recognised condition, a dialysis session or
kidney transplant (Procedure or Encounter) of the patient. Only those are validated with
fhir.resources. Every code is read through the knowledge's code systems, so OID URIs and claims
URIs mean the same as the canonical ones. A resource that fails validation, belongs to another
patient or carries an unreadable value is listed in `record.unreadable`, never fatal and never
guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cds_service.clinical.assessment import FUTURE_SKEW
from cds_service.clinical.lab_values import read_value
from cds_service.clinical.record import (
    UNRESOLVED_MEDICATION,
    ConditionEntry,
    LabResult,
    Medication,
    PatientRecord,
    ProcedureEntry,
    Unreadable,
)
from cds_service.fhir.dates import parse_instant, raw_period_end
from cds_service.fhir.read import (
    VALIDATION_MEMO,
    as_list,
    belongs_to,
    codings,
    concept_text,
    medication_reference,
)
from cds_service.fhir.read import Unreadable as UnreadableResource
from cds_service.knowledge import SUSPECTED, Knowledge
from cds_service.knowledge.model import Codings, LabDefinition, MedicineClass, MedicineMatch

Raw = dict[str, Any]  # a FHIR resource as parsed JSON, not validated
# What an order or statement is about, once classified: (match, name, referenced Medication).
Classified = tuple[MedicineMatch, str, Raw | None]
# Second-pass candidates, (when, raw resource, ...), read newest first.
_Candidate = TypeVar("_Candidate", bound=tuple[Any, ...])

_OLDEST = datetime(1, 1, 1, tzinfo=UTC)
# Where Encounters carry what they were for.
_ENCOUNTER_CONCEPTS = ("type", "serviceType", "reasonCode")
_ABATEMENTS = ("abatementDateTime", "abatementAge", "abatementPeriod", "abatementRange",
               "abatementString")


# The resource types the builder reads (Medication only through the orders naming it):
# population screening reads these files of an export and no others.
RESOURCE_TYPES = ("Patient", "Condition", "Procedure", "Encounter", "Observation",
                  "MedicationRequest", "MedicationStatement", "MedicationAdministration")


def _status_code(concept: Any) -> str | None:
    found = codings(concept)
    return found[0][1] if found else None


class RecordBuilder:
    """Turns the raw resources of one hook call into a PatientRecord."""

    def __init__(self, knowledge: Knowledge, patient_id: str, as_of: datetime | None = None):
        self.knowledge = knowledge
        self.statuses = knowledge.statuses
        self.loinc = knowledge.systems["loinc"]
        self.patient_id = patient_id
        self.as_of = as_of
        self.record = PatientRecord(patient_id=patient_id)
        self.medications_by_ref: dict[str, Raw] = {}
        self._handlers = {
            "Patient": self._patient,
            "Condition": self._condition,
            "Procedure": self._procedure,
            "Encounter": self._encounter,
            "Observation": self._observation,
            "MedicationRequest": self._medication_request,
            "MedicationStatement": self._medication_statement,
            "MedicationAdministration": self._medication_administration,
        }
        assert set(self._handlers) == set(RESOURCE_TYPES)
        # concept id -> (when, raw resource, identifying code key or None for text)
        self._events: dict[str, list[tuple[datetime | None, Raw, tuple[str, str] | None]]] = {}
        self._lab_candidates: dict[str, list[tuple[datetime | None, Raw]]] = {}
        # Doses given: only the newest of each medicine is read (in-centre doses repeat weekly).
        self._given: dict[tuple[str, str], tuple[datetime, Raw, Classified]] = {}

    # -- helpers -------------------------------------------------------------------------------
    def _codings(self, concept: Any) -> tuple[tuple[str, str, str], ...]:
        """Codings of a raw CodeableConcept, in canonical (system, code) form."""
        canonical = self.knowledge.code_systems.canonical
        return tuple((*canonical(s, c), d) for s, c, d in codings(concept))

    def _skip(self, resource: Raw, reason: str) -> None:
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        rid = resource.get("id") if isinstance(resource, dict) else None
        ref = f"{rtype}/{rid}" if isinstance(rtype, str) and isinstance(rid, str) else None
        self.record.unreadable.append(Unreadable(str(rtype or "unknown"), reason, ref))

    def _validated(self, resource: Raw) -> bool:
        """True when the resource is this patient's and valid FHIR R4 (after tolerated repairs)."""
        if not belongs_to(resource, self.patient_id):
            self._skip(resource, "belongs to another patient")
            return False
        try:
            VALIDATION_MEMO.check(resource)
        except UnreadableResource as exc:
            self._skip(resource, str(exc))
            return False
        return True

    @staticmethod
    def _ref(resource: Raw) -> str:
        rtype, rid = resource.get("resourceType"), resource.get("id")
        return f"{rtype}/{rid}" if isinstance(rid, str) else str(rtype)

    def _too_new(self, when: datetime | None) -> bool:
        return self.as_of is not None and when is not None and when > self.as_of + FUTURE_SKEW

    # -- entry point ---------------------------------------------------------------------------
    def add_medication_index(self, resources: Iterable[Raw]) -> None:
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

    # -- patient and conditions ----------------------------------------------------------------
    def _patient(self, resource: Raw) -> None:
        if resource.get("id") != self.patient_id:
            self._skip(resource, "belongs to another patient")
            return
        if not self._validated(resource):
            return
        self.record.sex = resource.get("gender")
        # Dead by `as_of`: a screen of an old export as of an earlier date (or a death recorded
        # with a date after it) sees the patient alive then.
        died = resource.get("deceasedDateTime")
        self.record.deceased = (resource.get("deceasedBoolean") is True or (
            died is not None and not self._too_new(parse_instant(died))))
        self.record.birth_date = parse_instant(resource.get("birthDate"))

    def _condition(self, resource: Raw) -> None:
        found, text = self._codings(resource.get("code")), concept_text(resource.get("code"))
        hits = self.knowledge.condition_index.match(found, text)
        if not hits or not self._validated(resource):
            return
        verification = _status_code(resource.get("verificationStatus"))
        if verification in self.statuses.condition_ignored_verification:
            return
        certainty = next((h.certainty for h in hits.values() if h.certainty != "confirmed"),
                         "confirmed")
        if verification in self.statuses.condition_suspected_verification:
            certainty = SUSPECTED if certainty == "confirmed" else certainty
        onset = (parse_instant(resource.get("onsetDateTime"))
                 or raw_period_end(resource.get("onsetPeriod")))
        recorded = parse_instant(resource.get("recordedDate"))
        if self._too_new(onset or recorded):
            return  # diagnosed after `as_of` (a screen as of an earlier date)
        self.record.conditions.append(ConditionEntry(
            reference=self._ref(resource),
            concepts=tuple(hits),
            matched=tuple(h.matched for h in hits.values()),
            name=text,
            clinical_status=_status_code(resource.get("clinicalStatus")),
            verification_status=verification,
            onset=onset or recorded,
            abated=any(resource.get(key) is not None for key in _ABATEMENTS),
            recorded=recorded or onset,
            certainty=certainty,
        ))

    # -- dialysis sessions and transplants: Procedures and Encounters --------------------------
    def _event_concepts(self, found: Codings, text: str, resource: Raw) -> None:
        for concept_id, hit in self.knowledge.procedure_index.match(found, text).items():
            key = next(((s, c) for s, c, _d in found if c == hit.matched), None)
            self._events.setdefault(concept_id, []).append(
                (self._performed(resource), resource, key))

    def _procedure(self, resource: Raw) -> None:
        if resource.get("status") not in self.statuses.procedure:
            return
        self._event_concepts(self._codings(resource.get("code")),
                             concept_text(resource.get("code")), resource)

    @staticmethod
    def _performed(resource: Raw) -> datetime | None:
        if resource.get("resourceType") == "Encounter":
            return raw_period_end(resource.get("period"))
        return (parse_instant(resource.get("performedDateTime"))
                or raw_period_end(resource.get("performedPeriod"))
                or parse_instant(resource.get("performedString")))

    def _encounter(self, resource: Raw) -> None:
        if resource.get("status") not in self.statuses.encounter:
            return
        concepts = [c for key in _ENCOUNTER_CONCEPTS for c in as_list(resource.get(key))]
        found = tuple(c for concept in concepts for c in self._codings(concept))
        text = " ; ".join(t for concept in concepts if (t := concept_text(concept)))
        self._event_concepts(found, text, resource)

    def _read_event(self, concept_id: str, resource: Raw,
                    key: tuple[str, str] | None) -> ProcedureEntry | None:
        if not self._validated(resource):
            return None
        if resource["resourceType"] == "Encounter":
            concepts = [c for k in _ENCOUNTER_CONCEPTS for c in as_list(resource.get(k))]
        else:
            concepts = [resource.get("code")]
        when = self._performed(resource)
        name = next((t for c in concepts if (t := concept_text(c))), "")
        entry = ProcedureEntry(
            reference=self._ref(resource), concept=concept_id,
            code=key[1] if key else self.knowledge.procedures[concept_id].label, name=name,
            status=str(resource.get("status")), performed=when, system=key[0] if key else "")
        self.record.procedures.append(entry)
        return entry

    # -- laboratory results --------------------------------------------------------------------
    def _observation(self, resource: Raw) -> None:
        lab_id = next((self.knowledge.lab_by_loinc[c]
                       for s, c, _d in self._codings(resource.get("code"))
                       if s == self.loinc and c in self.knowledge.lab_by_loinc), None)
        if lab_id is None or resource.get("status") not in self.statuses.result:
            return
        self._lab_candidates.setdefault(lab_id, []).append((self._effective(resource), resource))

    @staticmethod
    def _effective(observation: Raw) -> datetime | None:
        return (parse_instant(observation.get("effectiveDateTime"))
                or raw_period_end(observation.get("effectivePeriod"))
                or parse_instant(observation.get("effectiveInstant"))
                or parse_instant(observation.get("issued")))

    def _read_observation(self, resource: Raw, lab_id: str) -> LabResult | None:
        if not self._validated(resource):
            return None
        loinc = next(c for s, c, _d in self._codings(resource.get("code"))
                     if s == self.loinc and self.knowledge.lab_by_loinc.get(c) == lab_id)
        effective = self._effective(resource)
        reference = self._ref(resource)
        if effective is None:
            self._skip(resource, f"{lab_id} result without a date")
            return None
        lab = self.knowledge.labs[lab_id]
        reported = read_value(resource, lab.units, self.knowledge.canonical_unit)
        if reported.value is None:
            self.record.unreadable.append(Unreadable(
                "Observation", f"{lab.label}: {reported.unreadable_because}", reference))
        result = LabResult(
            reference, lab_id, loinc, reported.value, reported.comparator, reported.reported,
            reported.unit, effective, str(resource.get("status")),
            reference_high=self._upper_limit(resource, lab, reported.unit),
            unreadable_because=reported.unreadable_because)
        self.record.labs.append(result)
        return result

    def _upper_limit(self, observation: Raw, lab: LabDefinition, unit: str) -> float | None:
        """The assay's upper limit of normal, in the canonical unit: only from a range that is
        the normal range (no `type`, or type normal), never a treatment or target range."""
        for reference_range in as_list(observation.get("referenceRange")):
            if not isinstance(reference_range, dict):
                continue
            kind = reference_range.get("type")
            if kind is not None and not any(
                    (s, c) in self.knowledge.uln_range_types for s, c, _d in self._codings(kind)):
                continue
            high = reference_range.get("high")
            if not isinstance(high, dict) or not isinstance(high.get("value"), int | float):
                continue
            code, system = high.get("code"), high.get("system")
            high_unit = self.knowledge.canonical_unit(
                str(code if code and system == "http://unitsofmeasure.org"
                    else high.get("unit") or code or "")) or unit
            factor = lab.units.get(high_unit)
            return float(high["value"]) * factor if factor is not None else None
        return None

    # -- medicines -----------------------------------------------------------------------------
    def _medicine_of(self, raw: Raw) -> tuple[Codings, str, str, Raw | None] | None:
        """(codings, name, form text, referenced Medication) of what an order is about."""
        concept = raw.get("medicationCodeableConcept")
        if isinstance(concept, dict):
            return self._codings(concept), concept_text(concept), "", None
        reference = raw.get("medicationReference")
        if reference is None:
            self._skip(raw, f"invalid {raw.get('resourceType')}: no medication")
            return None
        ref = medication_reference(reference)
        medication = None
        if ref and ref.startswith("#"):
            medication = next((c for c in as_list(raw.get("contained"))
                               if isinstance(c, dict) and c.get("id") == ref[1:]), None)
        elif ref:
            medication = self.medications_by_ref.get(ref)
        if medication is None:
            display = reference.get("display") if isinstance(reference, dict) else None
            if isinstance(display, str) and display:
                return (), display, "", None
            self._skip(raw, UNRESOLVED_MEDICATION)
            return None
        code = medication.get("code")
        display = reference.get("display") if isinstance(reference, dict) else ""
        return (self._codings(code), concept_text(code) or display or "",
                concept_text(medication.get("form")), medication)

    @staticmethod
    def _routes(dosages: Any) -> str:
        """The coded route only: free dosage text ("for uveitis (eye)") says nothing of form."""
        return " ".join(concept_text(d.get("route")) for d in as_list(dosages)
                        if isinstance(d, dict) and d.get("route") is not None)

    def _single_dose(self, medicine_class: MedicineClass, dosages: Any, name: str, *,
                     given: bool) -> bool:
        """A dose given once (antiemetic dexamethasone before chemotherapy) is not exposure."""
        spec = medicine_class.single_dose
        if spec is None:
            return False
        texts = [name]
        for dosage in as_list(dosages):
            if not isinstance(dosage, dict):
                continue
            texts += [dosage.get("text") or "", dosage.get("patientInstruction") or ""]
            repeat = (dosage.get("timing") or {}).get("repeat") if isinstance(
                dosage.get("timing"), dict) else None
            if not given and isinstance(repeat, dict) and repeat.get("count") == 1:
                return True
        return spec.matches(" ; ".join(t for t in texts if isinstance(t, str)), given=given)

    def _order_end(self, dosages: Any, authored: datetime | None) -> datetime | None:
        """When the dosage instructions end (boundsPeriod.end, or boundsDuration from authoredOn);
        None when any instruction is open-ended."""
        ends = []
        for dosage in as_list(dosages):
            timing = dosage.get("timing") if isinstance(dosage, dict) else None
            repeat = timing.get("repeat") if isinstance(timing, dict) else None
            if not isinstance(repeat, dict):
                return None
            period, duration = repeat.get("boundsPeriod"), repeat.get("boundsDuration")
            end = parse_instant(period.get("end")) if isinstance(period, dict) else None
            if end is None and isinstance(duration, dict) and authored is not None:
                days = self.knowledge.duration_days.get(
                    str(duration.get("code") or duration.get("unit") or "").lower())
                value = duration.get("value")
                if days is not None and isinstance(value, int | float):
                    end = authored + timedelta(days=float(value) * days)
            if end is None:
                return None
            ends.append(end)
        return max(ends) if ends else None

    def _classify(self, raw: Raw, dosages: Any) -> Classified | None:
        """(match, name, medication resource) for a medicine of a known class, else None."""
        medicine = self._medicine_of(raw)
        if medicine is None:
            return None
        found, name, form, medication = medicine
        match = self.knowledge.classify_medicine(found, name, f"{form} {self._routes(dosages)}")
        if match is None:
            return None
        return match, name, medication

    def _add_medicine(self, raw: Raw, classified: Classified, *, kind: str,
                      date: datetime | None, ends: datetime | None, dosages: Any) -> None:
        match, name, medication = classified
        if not self._validated(raw):
            return
        if medication is not None:
            try:
                VALIDATION_MEMO.check(medication)
            except UnreadableResource as exc:
                self._skip(raw, f"referenced {exc}")
                return
        excluded = match.excluded_because
        medicine_class = self.knowledge.medicines.by_id[match.medicine_class]
        if excluded is None and self._single_dose(medicine_class, dosages, name,
                                                  given=kind == "administration"):
            excluded = "single dose"
        self.record.medications.append(Medication(
            reference=self._ref(raw), name=name or match.ingredient,
            ingredient=match.ingredient, medicine_class=match.medicine_class,
            matched_by=match.matched_by, status=str(raw.get("status")),
            is_draft=kind == "draft", date=date, ends=ends, excluded_because=excluded,
            kind=kind))

    def _medication_request(self, resource: Raw, draft: bool = False) -> None:
        allowed = (self.statuses.draft_order if draft
                   else self.statuses.current_medication_request)
        if resource.get("status") not in allowed or resource.get("doNotPerform") is True:
            return  # a "do not give" order is the opposite of exposure
        dosages = resource.get("dosageInstruction")
        authored = parse_instant(resource.get("authoredOn"))
        # Currency is the order's status and its dosage bounds: an active order whose
        # boundsPeriod or boundsDuration has run out is not current. dispenseRequest's
        # validityPeriod bounds dispensing (refills), not therapy, so it is not read.
        if not draft and self._too_new(authored):
            return  # ordered after `as_of` (a screen as of an earlier date)
        ends = None if draft else self._order_end(dosages, authored)
        if ends is not None and self.as_of is not None and ends < self.as_of:
            return
        classified = self._classify(resource, dosages)
        if classified is not None:
            self._add_medicine(resource, classified, kind="draft" if draft else "order",
                               date=authored, ends=ends, dosages=dosages)

    def _medication_statement(self, resource: Raw) -> None:
        if resource.get("status") not in self.statuses.current_medication_statement:
            return
        dosages = resource.get("dosage")
        period = resource.get("effectivePeriod")
        start = (parse_instant(resource.get("effectiveDateTime"))
                 or (parse_instant(period.get("start")) if isinstance(period, dict) else None)
                 or parse_instant(resource.get("dateAsserted")))
        if self._too_new(start):
            return  # started after `as_of`
        ends = parse_instant(period.get("end")) if isinstance(period, dict) else None
        ends = ends or self._order_end(dosages, start)
        if ends is not None and self.as_of is not None and ends < self.as_of:
            return
        classified = self._classify(resource, dosages)
        if classified is not None:
            self._add_medicine(resource, classified, kind="statement", date=start, ends=ends,
                               dosages=dosages)

    def _medication_administration(self, resource: Raw) -> None:
        """A dose given (in-centre IV vitamin D at each session) counts as current use when it
        is recent; only the newest dose of each medicine is read."""
        if resource.get("status") not in self.statuses.medication_administration:
            return
        given = (parse_instant(resource.get("effectiveDateTime"))
                 or raw_period_end(resource.get("effectivePeriod")))
        if given is None or self._too_new(given):
            return
        if self.as_of is not None and given < self.as_of - timedelta(
                days=self.knowledge.administration_recency_days):
            return
        classified = self._classify(resource, resource.get("dosage"))
        if classified is None:
            return
        key = (classified[0].medicine_class, classified[0].ingredient)
        if key not in self._given or self._given[key][0] < given:
            self._given[key] = (given, resource, classified)

    # -- the second pass -------------------------------------------------------------------------
    def finish(self) -> None:
        """Validate the sessions, transplants, doses and results the rules can use.

        The rules read only the newest dialysis session (and the newest that is not one of the
        ambiguous acute-or-chronic codes), the newest transplant and, per lab, the latest
        readable result (with any newer unreadable ones, which the card reports). So candidates
        are read newest first and reading stops there: a chart with 430 dialysis sessions
        validates one. Without `as_of`, everything is read.
        """
        as_of = self.as_of

        def newest_first(candidates: list[_Candidate]) -> list[_Candidate]:
            ordered = sorted(candidates, key=lambda c: c[0] or _OLDEST, reverse=True)
            return [c for c in ordered if not self._too_new(c[0])]

        ambiguous = self.knowledge.scope.ambiguous_dialysis_codes
        for concept_id, candidates in self._events.items():
            wanted_unambiguous = concept_id == "dialysis"
            seen_any = False
            for _when, resource, key in newest_first(candidates):
                if seen_any and key in ambiguous:
                    continue
                entry = self._read_event(concept_id, resource, key)
                if entry is None or as_of is None:
                    continue
                seen_any = True
                if not wanted_unambiguous or key not in ambiguous:
                    break
        for _when, resource, classified in self._given.values():
            self._add_medicine(resource, classified, kind="administration", date=_when,
                               ends=None, dosages=resource.get("dosage"))
        for lab_id, results in self._lab_candidates.items():
            for _when, resource in newest_first(results):
                result = self._read_observation(resource, lab_id)
                if result is not None and result.value is not None and as_of is not None:
                    break


def build_record(knowledge: Knowledge, patient_id: str, resources: Iterable[Raw],
                 draft_orders: Iterable[Raw] = (), known_empty: tuple[str, ...] = (),
                 as_of: datetime | None = None,
                 unavailable: tuple[str, ...] = ()) -> PatientRecord:
    """Normalise the patient's FHIR resources (and the hook's draft orders) into a record.

    `as_of` (the assessment's now) lets the builder skip validating what the rules will not
    read: older dialysis sessions, ended orders, old doses and results superseded by a newer
    readable one.
    """
    resources = list(resources)
    draft_orders = list(draft_orders)
    builder = RecordBuilder(knowledge, patient_id, as_of)
    builder.add_medication_index(r for r in resources + draft_orders if isinstance(r, dict))
    for resource in resources:
        builder.add(resource)
    for order in draft_orders:
        if isinstance(order, dict) and order.get("resourceType") == "MedicationRequest":
            builder.add(order, draft=True)
    builder.finish()
    builder.record.known_empty = known_empty
    builder.record.unavailable = unavailable
    # The same data gives the same card, whatever order prefetch or a FHIR search used.
    builder.record.medications.sort(key=lambda m: (m.is_draft, "" if m.is_draft else m.reference))
    builder.record.conditions.sort(key=lambda c: c.reference)
    return builder.record
