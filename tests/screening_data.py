"""Generated Bulk exports for the screening tests, and the hook requests of their patients."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from population import generate

from cds_service.fhir.read import medication_reference
from cds_service.fhir.searches import patient_searches

AS_OF = "2026-11-20T12:00:00Z"  # the generator's default anchor
# Small, dialysis-rich and noisy: every path of the screen is taken in a few seconds.
POPULATION = dict(patients=300, seed=7, dialysis_share=0.25, noise_scale=400.0)


def write_population(out: Path, **extra) -> dict:
    return generate(out, POPULATION["patients"], seed=POPULATION["seed"], as_of=AS_OF,
                    dialysis_share=POPULATION["dialysis_share"],
                    noise_scale=POPULATION["noise_scale"], **extra)


def read_export(folder: Path) -> tuple[dict[str, dict], dict[str, list[dict]], dict[str, dict]]:
    """(patients by id, each patient's other resources, Medications by reference), reading
    every line with the standard library: the test's own view of the files."""
    patients, resources, medications = {}, defaultdict(list), {}
    for path in sorted(folder.glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                resource = json.loads(line)
            except ValueError:
                continue
            if resource["resourceType"] == "Patient":
                patients[resource["id"]] = resource
            elif resource["resourceType"] == "Medication":
                medications[f"Medication/{resource['id']}"] = resource
            else:
                ref = (resource.get("subject") or resource.get("patient") or {}).get("reference")
                resources[ref.split("Patient/", 1)[1]].append(resource)
    return patients, resources, medications


def patient_view_request(patient: dict, resources: list[dict], medications: dict,
                         knowledge) -> dict:
    """The patient-view call an EHR would make for this patient, everything as prefetch."""
    prefetch: dict = {"patient": patient}
    for search in patient_searches(knowledge):
        if search.key == "patient":
            continue
        found = [r for r in resources if r["resourceType"] == search.resource_type]
        named = {medication_reference(r.get("medicationReference")) for r in found}
        found += [medications[ref] for ref in sorted(n for n in named if n in medications)]
        prefetch[search.key] = {"resourceType": "Bundle", "type": "searchset",
                                "entry": [{"resource": r} for r in found]}
    return {"hookInstance": "6f0ab7a8-1c55-4b3e-9a0e-0d4c1c3b2a10", "hook": "patient-view",
            "context": {"userId": "Practitioner/screening-test", "patientId": patient["id"]},
            "prefetch": prefetch}
