"""Warm-up before serving: the first fhir.resources validation of a type is slow (model build)."""

from __future__ import annotations

from typing import Any

from cds_service.fhir.read import validate

_SAMPLES: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "warm-up", "gender": "unknown"},
    {"resourceType": "Condition", "id": "w", "subject": {"reference": "Patient/warm-up"},
     "code": {"text": "warm-up"}},
    {"resourceType": "Procedure", "id": "w", "status": "completed",
     "subject": {"reference": "Patient/warm-up"}, "code": {"text": "warm-up"}},
    {"resourceType": "Observation", "id": "w", "status": "final", "code": {"text": "warm-up"},
     "valueQuantity": {"value": 1, "unit": "mg/dL"}, "effectiveDateTime": "2020-01-01"},
    {"resourceType": "MedicationRequest", "id": "w", "status": "active", "intent": "order",
     "subject": {"reference": "Patient/warm-up"}, "medicationCodeableConcept": {"text": "w"}},
    {"resourceType": "MedicationStatement", "id": "w", "status": "active",
     "subject": {"reference": "Patient/warm-up"}, "medicationCodeableConcept": {"text": "w"}},
    {"resourceType": "Medication", "id": "w", "code": {"text": "w"}},
]


def warm_up() -> None:
    for sample in _SAMPLES:
        validate(sample)
