"""Reading raw FHIR R4 JSON: cheap look-ups on dicts, and validation of what the rules use.

Validation uses `fhir.resources.R4B` (the R4-compatible models; the package's default R5 models
reject R4 shapes such as `medicationCodeableConcept`). Validation costs ~100 µs a resource, so
callers first pick the resources that matter with the cheap helpers here and validate only those.

Real EHR data is messier than the specification: a single object where a list belongs, an element
from a later FHIR version, a dateTime without a time zone. `validate` repairs exactly those three
shapes (on a copy) and otherwise reports why a resource could not be read.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import orjson
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cds_service.fhir.nesting import MAX_JSON_DEPTH, nesting_exceeds
from fhir.resources.R4B import get_fhir_model_class

Coding = tuple[str, str, str]  # (system, code, display)

_NAIVE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_MAX_REPAIRS = 20


class Unreadable(Exception):
    """A resource that is not valid FHIR R4 even after the tolerated repairs."""


def codings(concept: Any) -> tuple[Coding, ...]:
    """(system, code, display) of a raw CodeableConcept; junk shapes give ()."""
    if not isinstance(concept, dict):
        return ()
    found = concept.get("coding")
    if isinstance(found, dict):
        found = [found]
    if not isinstance(found, list):
        return ()
    return tuple(
        (str(c.get("system") or ""), str(c.get("code") or ""), str(c.get("display") or ""))
        for c in found
        if isinstance(c, dict) and c.get("code") is not None
    )


def concept_text(concept: Any) -> str:
    """The human text of a raw CodeableConcept: its `text`, else the displays."""
    if not isinstance(concept, dict):
        return ""
    text = concept.get("text")
    if isinstance(text, str) and text:
        return text
    return " ".join(d for _s, _c, d in codings(concept) if d)


def as_list(value: Any) -> list[Any]:
    """A FHIR array element as a list, tolerating a single object where the array belongs."""
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def medication_reference(reference: Any) -> str | None:
    """"#id" of a contained Medication, or "Medication/id" (also from an absolute URL)."""
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("#"):
        return ref
    return "Medication/" + ref.split("/_history/")[0].rsplit("Medication/", 1)[-1]


def reference_of(value: Any) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else None


def belongs_to(resource: dict[str, Any], patient_id: str) -> bool:
    """False only when the resource names a different patient as its subject."""
    for key in ("subject", "patient"):
        ref = reference_of(resource.get(key))
        if ref is None:
            continue
        ref = ref.split("/_history/")[0]
        return ref == f"Patient/{patient_id}" or ref.endswith(f"/Patient/{patient_id}")
    return True


def _locate(document: Any, loc: tuple[int | str, ...]) -> tuple[Any, Any] | None:
    """(container, key) of the element at a pydantic error location, if it exists."""
    node = document
    for step in loc[:-1]:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    last = loc[-1] if loc else None
    try:
        node[last]
    except (KeyError, IndexError, TypeError):
        return None
    return node, last


def _repair(document: dict[str, Any], error: ErrorDetails) -> bool:
    """Fix one tolerated defect in place; False when the error is not one we repair."""
    found = _locate(document, tuple(error.get("loc", ())))
    if found is None:
        return False
    container, key = found
    value = container[key]
    kind = error.get("type")
    if kind == "list_type" and isinstance(value, dict):
        container[key] = [value]  # single object where FHIR wants an array
        return True
    if kind == "extra_forbidden":
        del container[key]  # element unknown to R4 (later version, local habit)
        return True
    if isinstance(value, str) and _NAIVE_DATETIME.match(value):
        container[key] = value + "Z"  # a dateTime without zone: read as UTC
        return True
    return False


def validate(resource: dict[str, Any]) -> Any:
    """The fhir.resources R4B model of a raw resource, or raise Unreadable with a short reason."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise Unreadable("no resourceType")
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as exc:
        raise Unreadable("unknown resourceType") from exc
    if nesting_exceeds(resource, MAX_JSON_DEPTH):
        raise Unreadable(f"{resource_type} nested deeper than {MAX_JSON_DEPTH} levels")
    document = resource
    for _ in range(_MAX_REPAIRS):
        try:
            return model.model_validate(document)
        except ValidationError as exc:
            if document is resource:
                document = copy.deepcopy(resource)
            errors = exc.errors()
            if not any(_repair(document, e) for e in errors):
                first = errors[0]
                where = ".".join(str(p) for p in first.get("loc", ()))
                raise Unreadable(f"invalid {resource_type}: {where} {first.get('type')}") from None
        except (TypeError, ValueError, RecursionError) as exc:
            raise Unreadable(f"invalid {resource_type}: {type(exc).__name__}") from None
    raise Unreadable(f"invalid {resource_type}: too many defects")


class ValidationMemo:
    """Verdicts of `validate` remembered by the resource's content, so that the same chart sent
    again (a chart opened, then orders drafted and signed: the same prefetch three times) is not
    validated again. Keyed by a 128-bit BLAKE2 digest of the canonical JSON, so no patient data
    is kept; bounded: when full it starts again empty."""

    def __init__(self, capacity: int = 50_000):
        self.capacity = capacity
        self._verdicts: dict[bytes, str | None] = {}

    def check(self, resource: dict[str, Any]) -> None:
        """Raise Unreadable exactly as `validate` would, for this resource's content."""
        try:
            key = hashlib.blake2b(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS),
                                  digest_size=16).digest()
        except (TypeError, orjson.JSONEncodeError):
            validate(resource)  # not JSON-encodable as is: validate every time
            return
        verdict = self._verdicts.get(key, ...)
        if verdict is ...:
            try:
                validate(resource)
                verdict = None
            except Unreadable as exc:
                verdict = str(exc)
            if len(self._verdicts) >= self.capacity:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        if verdict is not None:
            raise Unreadable(verdict)

    def clear(self) -> None:
        self._verdicts.clear()


VALIDATION_MEMO = ValidationMemo()


def bundle_resources(value: Any) -> list[dict[str, Any]]:
    """Resources in a Bundle (any type, or none), or the value itself if it is a resource."""
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") != "Bundle":
        return [value] if isinstance(value.get("resourceType"), str) else []
    entries = value.get("entry")
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            found.append(entry["resource"])
    return found


def unresolved_medications(resources: list[dict[str, Any]]) -> list[str]:
    """`Medication/x` references of medicine orders whose Medication is not at hand."""
    present = {f"Medication/{r.get('id')}" for r in resources
               if isinstance(r, dict) and r.get("resourceType") == "Medication"}
    wanted = []
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") not in (
                "MedicationRequest", "MedicationStatement", "MedicationAdministration"):
            continue
        ref = medication_reference(resource.get("medicationReference"))
        if ref is None or ref.startswith("#"):
            continue
        if ref not in present and ref not in wanted and "/" not in ref[len("Medication/"):]:
            wanted.append(ref)
    return wanted
