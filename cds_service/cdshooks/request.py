"""CDS Hooks request parsing and validation (Q1). A bad request becomes BadRequest here.

Unknown fields and `extension` objects are ignored, as the specification requires; the fields we
use are type-checked strictly so that nothing malformed reaches the assessment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cds_service.cdshooks.services import Service
from cds_service.errors import BadRequest

MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class HookRequest:
    service: Service
    hook_instance: str
    patient_id: str
    user_id: str
    encounter_id: str | None
    prefetch: dict[str, Any]
    draft_orders: list[dict]
    selections: frozenset[str] | None
    fhir_server: str | None
    access_token: str | None = field(default=None, repr=False)  # never logged
    client_iss: str | None = None  # the authenticated EHR, for its FHIR server allow-list


def _string(container: dict, key: str, where: str, *, required: bool) -> str | None:
    value = container.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{where}{key} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{where}{key} must be a non-empty string")
    if len(value) > MAX_ID_LENGTH and key not in ("fhirServer", "access_token", "scope"):
        raise BadRequest(f"{where}{key} is too long")
    return value


def _resource_id(value: str, name: str) -> str:
    """patientId is a FHIR id (or Patient/id): letters, digits, '-', '.', up to 64 characters."""
    candidate = value.removeprefix("Patient/")
    if not candidate or len(candidate) > 64 or not all(
            c.isascii() and (c.isalnum() or c in "-.") for c in candidate):
        raise BadRequest(f"context.{name} is not a valid FHIR id")
    return candidate


def _draft_orders(context: dict) -> list[dict]:
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict):
        raise BadRequest("context.draftOrders must be a FHIR Bundle object")
    if bundle.get("resourceType") != "Bundle":
        raise BadRequest("context.draftOrders must have resourceType Bundle")
    entries = bundle.get("entry", [])
    if isinstance(entries, dict):
        entries = [entries]  # a single entry object: tolerated
    if not isinstance(entries, list):
        raise BadRequest("context.draftOrders.entry must be an array")
    orders = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            raise BadRequest(f"context.draftOrders.entry[{index}].resource must be an object")
        orders.append(entry["resource"])
    return orders


def _selections(context: dict) -> frozenset[str]:
    selections = context.get("selections")
    if not isinstance(selections, list) or not all(
            isinstance(s, str) and s for s in selections):
        raise BadRequest("context.selections must be an array of strings like "
                         "'MedicationRequest/123'")
    return frozenset(selections)


def _http_url(value: str) -> bool:
    """An http(s) URL in printable ASCII with a host: what a FHIR base URL is. urlsplit alone
    passes control characters and raises ValueError on a malformed port or IPv6 host."""
    if not value.startswith(("http://", "https://")) or not all(
            "!" <= c <= "~" for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (parses the port; ValueError if malformed)
    except ValueError:
        return False
    return bool(parts.hostname)


def parse_request(service: Service, body: Any) -> HookRequest:
    """Validate a decoded JSON body against the CDS Hooks 2.0 rules for this service."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    hook = _string(body, "hook", "", required=True)
    if hook != service.hook:
        raise BadRequest(f"service {service.id} serves hook '{service.hook}', not '{hook}'")
    hook_instance = _string(body, "hookInstance", "", required=True)
    context = body.get("context")
    if not isinstance(context, dict):
        raise BadRequest("context is required and must be an object")
    user_id = _string(context, "userId", "context.", required=True)
    patient_id = _resource_id(_string(context, "patientId", "context.", required=True),
                              "patientId")
    encounter_id = _string(context, "encounterId", "context.", required=False)
    draft_orders: list[dict] = []
    selections = None
    if "draftOrders" in service.required_context:
        draft_orders = _draft_orders(context)
    if "selections" in service.required_context:
        selections = _selections(context)

    fhir_server = _string(body, "fhirServer", "", required=False)
    if fhir_server is not None and not _http_url(fhir_server):
        raise BadRequest("fhirServer must be an http(s) URL")
    access_token = None
    authorization = body.get("fhirAuthorization")
    if authorization is not None:
        if not isinstance(authorization, dict):
            raise BadRequest("fhirAuthorization must be an object")
        if fhir_server is None:
            raise BadRequest("fhirServer is required when fhirAuthorization is sent")
        access_token = _string(authorization, "access_token", "fhirAuthorization.",
                               required=True)
        token_type = _string(authorization, "token_type", "fhirAuthorization.", required=True)
        if token_type.lower() != "bearer":
            raise BadRequest("fhirAuthorization.token_type must be 'Bearer'")
        expires = authorization.get("expires_in")
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
            raise BadRequest("fhirAuthorization.expires_in must be an integer")
        for key in ("scope", "subject", "patient"):
            _string(authorization, key, "fhirAuthorization.", required=False)

    prefetch = body.get("prefetch", {})
    if prefetch is None:
        prefetch = {}
    if not isinstance(prefetch, dict):
        raise BadRequest("prefetch must be an object")
    for key, value in prefetch.items():
        if value is not None and not isinstance(value, dict):
            raise BadRequest(f"prefetch.{key} must be a FHIR resource, Bundle or null")

    return HookRequest(service=service, hook_instance=hook_instance, patient_id=patient_id,
                       user_id=user_id, encounter_id=encounter_id, prefetch=prefetch,
                       draft_orders=draft_orders, selections=selections,
                       fhir_server=fhir_server, access_token=access_token)
