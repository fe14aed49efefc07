"""The CDS services this server offers, as listed by discovery (CDS Hooks D1).

All three read the same patient data; the prefetch templates ask for it in the simple query
subset every client supports (cds-hooks.md P4-P10) and stay short.
"""

from __future__ import annotations

from dataclasses import dataclass


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
