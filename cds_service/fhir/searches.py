"""The FHIR searches the rules need: one definition gives discovery's prefetch templates and the
fallback queries the service runs when prefetch lacks them, so both ask for the same statuses,
codes and resource types (cds-hooks.md P4-P10).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds_service.knowledge import Knowledge


@dataclass(frozen=True)
class PatientSearch:
    """One prefetch key: the FHIR search behind it, as a prefetch template (discovery) and as the
    fallback query the service runs when prefetch lacks it. One definition serves both, so the
    statuses and codes asked for are the same either way."""

    key: str
    resource_type: str
    # Search parameters besides the patient, shared by the template and the fallback query.
    params: tuple[tuple[str, str], ...] = ()
    # Fallback only (a template cannot compute dates): ask only for this many recent days, on
    # this date parameter, newest first.
    window_days: int | None = None
    date_param: str = "date"
    # Prefetch sorts newest first too, so that a paged prefetch whose first page already
    # reaches past the window is complete enough (see prefetch.gather).
    sort_template: bool = False
    read: bool = False  # Patient/{id} rather than a search
    # Evidence that can only add risk (a dialysis visit, a dose given): when a client neither
    # sends it nor lets us read it, the call goes on without it (and the card says so) rather
    # than answering 412 and showing nothing at all.
    optional: bool = False

    def template(self) -> str:
        if self.read:
            return f"{self.resource_type}/{{{{context.patientId}}}}"
        query = [("patient", "{{context.patientId}}"), *self.params]
        if self.sort_template:
            query.append(("_sort", f"-{self.date_param}"))
        return f"{self.resource_type}?" + "&".join(f"{k}={v}" for k, v in query)

    def fallback(self, patient_id: str, now: datetime,
                 page_size: int) -> tuple[str, dict[str, Any]]:
        """(path, search parameters) of the fallback query."""
        if self.read:
            return f"{self.resource_type}/{patient_id}", {}
        params = {"patient": patient_id, **dict(self.params), "_count": str(page_size)}
        if self.window_days is not None:
            since = (now - timedelta(days=self.window_days + 1)).date().isoformat()
            params[self.date_param] = f"ge{since}"
            params["_sort"] = f"-{self.date_param}"
        return self.resource_type, params


def patient_searches(knowledge: Knowledge) -> tuple[PatientSearch, ...]:
    """Every search the rules need, built from the knowledge so that a LOINC code or status added
    there is also asked for here. Procedures have no date window: a kidney transplant years ago
    still decides dialysis scope."""
    statuses = knowledge.statuses
    return (
        PatientSearch("patient", "Patient", read=True),
        PatientSearch("conditions", "Condition"),
        PatientSearch("procedures", "Procedure"),
        PatientSearch("encounters", "Encounter", window_days=knowledge.dialysis_recency_days,
                      sort_template=True, optional=True),
        PatientSearch("medications", "MedicationRequest", (
            ("status", ",".join(sorted(statuses.current_medication_request))),
            ("_include", "MedicationRequest:medication"))),
        PatientSearch("medicationStatements", "MedicationStatement", (
            ("status", ",".join(sorted(statuses.current_medication_statement))),)),
        PatientSearch("medicationAdministrations", "MedicationAdministration", (
            ("status", ",".join(sorted(statuses.medication_administration))),
            ("_include", "MedicationAdministration:medication")),
            window_days=knowledge.administration_recency_days, date_param="effective-time",
            optional=True),
        # Only the labs the rules read (PTH, phosphate, calcium, albumin, BMI), by code alone:
        # a lab stored under LOINC's OID URI must be found too (the record builder then reads
        # only LOINC codes, whatever their spelling). It also keeps the template short.
        PatientSearch("observations", "Observation", (
            ("code", ",".join(sorted(knowledge.lab_by_loinc))),),
            window_days=max(lab.window_days for lab in knowledge.labs.values())),
    )


def prefetch_templates(knowledge: Knowledge) -> dict[str, str]:
    """The templates discovery declares: short, since long URLs break clients."""
    return {search.key: search.template() for search in patient_searches(knowledge)}


# Prefetch key -> the FHIR resource type it holds.
PREFETCH: dict[str, str] = {
    "patient": "Patient",
    "conditions": "Condition",
    "procedures": "Procedure",
    "encounters": "Encounter",
    "medications": "MedicationRequest",
    "medicationStatements": "MedicationStatement",
    "medicationAdministrations": "MedicationAdministration",
    "observations": "Observation",
}


