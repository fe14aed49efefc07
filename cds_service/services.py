"""The CDS services this server offers, as listed by discovery (CDS Hooks D1).

All three read the same patient data; the prefetch templates ask for it in the simple query
subset every client supports (cds-hooks.md P4-P10) and stay short.
"""

from __future__ import annotations

from dataclasses import dataclass

from .knowledge import Knowledge

# Prefetch key -> the FHIR resource type it holds.
PREFETCH: dict[str, str] = {
    "patient": "Patient",
    "conditions": "Condition",
    "procedures": "Procedure",
    "medications": "MedicationRequest",
    "medicationStatements": "MedicationStatement",
    "observations": "Observation",
}


def prefetch_templates(knowledge: Knowledge) -> dict[str, str]:
    """The templates discovery declares, built from the knowledge so that a LOINC code or status
    added there is also asked for here."""
    statuses = knowledge.statuses
    return {
        "patient": "Patient/{{context.patientId}}",
        "conditions": "Condition?patient={{context.patientId}}",
        "procedures": "Procedure?patient={{context.patientId}}",
        "medications": "MedicationRequest?patient={{context.patientId}}&status="
        + ",".join(sorted(statuses.current_medication_request))
        + "&_include=MedicationRequest:medication",
        "medicationStatements": "MedicationStatement?patient={{context.patientId}}&status="
        + ",".join(sorted(statuses.current_medication_statement)),
        # Only the labs the rules read (PTH, phosphate, calcium, albumin, BMI).
        "observations": "Observation?patient={{context.patientId}}&code="
        + ",".join(sorted(knowledge.lab_by_loinc)),
    }


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    required_context: tuple[str, ...]

    def discovery(self, templates: dict[str, str]) -> dict:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": templates,
        }


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "calciphylaxis-patient-view", "patient-view",
            "Calciphylaxis risk on chart open",
            "Warns when a patient on maintenance dialysis has modifiable calciphylaxis risk "
            "factors: warfarin, calcium-based binders, active vitamin D, systemic steroids, "
            "calcineurin inhibitors, high PTH, phosphate or calcium.",
            ("userId", "patientId"),
        ),
        Service(
            "calciphylaxis-order-select", "order-select",
            "Calciphylaxis risk of the selected medication order",
            "Warns when a selected medication order for a patient on maintenance dialysis is a "
            "calciphylaxis risk factor, and suggests safer alternatives where they exist.",
            ("userId", "patientId", "selections", "draftOrders"),
        ),
        Service(
            "calciphylaxis-order-sign", "order-sign",
            "Calciphylaxis risk of medication orders being signed",
            "Warns, before signing, about each medication order that is a calciphylaxis risk "
            "factor for a patient on maintenance dialysis, with safer alternatives.",
            ("userId", "patientId", "draftOrders"),
        ),
    )
}
