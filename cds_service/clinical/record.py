"""The patient record the assessment reads: a small, typed digest of the FHIR data.

Only what the clinical rules need is kept, already normalised: medicines with their class and
ingredient, laboratory results in canonical units, coded conditions and procedures. Whatever could
not be read is listed in `unreadable` so that cards can say so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Medication:
    """A medicine order or statement that matched a risk class (or was excluded from one)."""

    reference: str  # "MedicationRequest/abc"
    name: str  # as the EHR shows it
    ingredient: str
    medicine_class: str
    matched_by: str
    status: str
    is_draft: bool
    date: datetime | None  # authoredOn / effective / asserted
    ends: datetime | None = None  # effective period or dosage bounds end, when given
    excluded_because: str | None = None
    # "order" (MedicationRequest), "statement", "administration" (a dose given) or "draft"
    kind: str = "order"


@dataclass(frozen=True, slots=True)
class LabResult:
    reference: str
    lab: str  # "pth", "phosphate", ...
    loinc: str
    value: float | None  # in the lab's canonical unit; None when unreadable
    comparator: str | None  # "<", "<=", ">=", ">": the value is a bound, not a measurement
    reported_value: str  # as sent, for the card ("170", ">2500")
    reported_unit: str  # as sent ("pmol/L")
    effective: datetime
    status: str
    reference_high: float | None = None  # in canonical unit
    unreadable_because: str | None = None


@dataclass(frozen=True, slots=True)
class ConditionEntry:
    reference: str
    concepts: tuple[str, ...]  # knowledge concept ids it matches
    matched: tuple[str, ...]  # the code or phrase per concept
    name: str
    clinical_status: str | None
    verification_status: str | None
    onset: datetime | None
    abated: bool
    recorded: datetime | None = None  # recordedDate, else onset: when the chart said so
    # What the chart's wording and verificationStatus say: confirmed, suspected or prior.
    certainty: str = "confirmed"


@dataclass(frozen=True, slots=True)
class ProcedureEntry:
    """A dialysis session or kidney transplant, from a Procedure or an Encounter."""

    reference: str  # "Procedure/x" or "Encounter/y"
    concept: str  # "dialysis" | "kidney_transplant"
    code: str  # the code or phrase that identified it
    name: str
    status: str
    performed: datetime | None
    system: str = ""  # of `code`; "" when identified by text


# Why a current medication order could not be read: its Medication was not sent (nor found).
UNRESOLVED_MEDICATION = "medication reference not included"


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A resource or value the service skipped, and why (no values, no identifiers)."""

    resource_type: str
    reason: str
    reference: str | None = None


@dataclass(slots=True)
class PatientRecord:
    patient_id: str
    sex: str | None = None
    deceased: bool = False
    birth_date: datetime | None = None
    medications: list[Medication] = field(default_factory=list)
    labs: list[LabResult] = field(default_factory=list)
    conditions: list[ConditionEntry] = field(default_factory=list)
    procedures: list[ProcedureEntry] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    # Keys whose data the client said is known-empty (prefetch `null`).
    known_empty: tuple[str, ...] = ()
    # Optional keys neither sent nor readable from the FHIR server (evidence that could only
    # have added risk): the card says the check went on without them.
    unavailable: tuple[str, ...] = ()
