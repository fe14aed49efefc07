"""CDS Hooks request parsing and validation (Q1). A bad request becomes BadRequest here.

The request is declared as pydantic models, one per hook; `/openapi.json` is generated from the
same models, so the document says what this parser accepts. Unknown fields and `extension`
objects are ignored, as the specification requires; the fields we use are type-checked strictly
so that nothing malformed reaches the assessment. Prefetched resources and draft orders are
passed on as dicts: they are read (and validated as FHIR) only as far as the rules need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from cds_service.cdshooks.services import Service
from cds_service.cdshooks.wire import Text, Wire, is_blank, is_own, path, rule, sentence
from cds_service.errors import BadRequest

MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class HookRequest:
    """A valid hook call, as the engine reads it."""

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


# --- the fields' types --------------------------------------------------------------------------

Id = Annotated[Text, Field(max_length=MAX_ID_LENGTH)]

_FHIR_ID = re.compile(r"(Patient/)?[A-Za-z0-9.\-]{1,64}")
PatientId = Annotated[
    Id, rule("fhir_id", "is not a valid FHIR id", _FHIR_ID.fullmatch),
    AfterValidator(lambda value: value.removeprefix("Patient/")),
    Field(json_schema_extra={"pattern": "^" + _FHIR_ID.pattern + "$",
                             "description": "A FHIR id, or Patient/id"})]


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


FhirUrl = Annotated[Text, rule("http_url", "must be an http(s) URL", _http_url),
                    Field(json_schema_extra={"pattern": "^https?://[!-~]+$"})]
Bearer = Annotated[Id, rule("bearer", "must be 'Bearer'", lambda v: v.lower() == "bearer"),
                   Field(json_schema_extra={"pattern": "^[Bb][Ee][Aa][Rr][Ee][Rr]$"})]


def _hook(name: str) -> Any:
    """The `hook` of a model: only `name` (parse_request words the refusal with the service)."""
    return Annotated[Id, rule("wrong_hook", "is not " + name, lambda v: v == name),
                     WithJsonSchema({"type": "string", "enum": [name]})]


# --- the request --------------------------------------------------------------------------------

class Entry(Wire):
    resource: dict[str, Any]


class DraftOrders(Wire):
    """A FHIR Bundle of the orders being written; their resources are passed on unvalidated."""

    resourceType: Literal["Bundle"]
    # A single entry object instead of an array is tolerated (seen from some EHRs).
    entry: Annotated[list[Entry], BeforeValidator(lambda v: [v] if isinstance(v, dict) else v,
                                                  json_schema_input_type=list[Entry] | Entry)
                     ] = []


class PatientViewContext(Wire):
    userId: Id
    patientId: PatientId
    encounterId: Id | None = None


class OrderSignContext(PatientViewContext):
    draftOrders: DraftOrders


class OrderSelectContext(OrderSignContext):
    selections: list[Annotated[StrictStr, Field(min_length=1)]]


class FhirAuthorization(Wire):
    access_token: Text
    token_type: Bearer
    expires_in: StrictInt | None = None
    scope: Text | None = None
    subject: Id | None = None
    patient: Id | None = None


# Key -> FHIR resource or searchset Bundle; null means known empty. A null prefetch: none sent.
Prefetch = dict[str, dict[str, Any] | None]


class _HookCall(Wire):
    """The fields every hook call has (CDS Hooks 2.0 'HTTP Request')."""

    hook: Id
    hookInstance: Id
    context: PatientViewContext
    fhirServer: FhirUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: Prefetch | None = None

    @field_validator("fhirAuthorization", mode="before")
    @classmethod
    def _needs_fhir_server(cls, value: Any, info: ValidationInfo) -> Any:
        # A fhirServer that failed its own check is not in info.data: that error comes first.
        if isinstance(value, dict) and info.data.get("fhirServer", "") is None:
            raise PydanticCustomError("fhir_server_missing",
                                      "fhirServer is required when fhirAuthorization is sent")
        return value


class PatientViewCall(_HookCall):
    hook: _hook("patient-view")


class OrderSelectCall(_HookCall):
    hook: _hook("order-select")
    context: OrderSelectContext


class OrderSignCall(_HookCall):
    hook: _hook("order-sign")
    context: OrderSignContext


CALLS: dict[str, type[_HookCall]] = {
    "patient-view": PatientViewCall, "order-select": OrderSelectCall, "order-sign": OrderSignCall}


# --- pydantic's errors in the service's words ---------------------------------------------------

_SELECTIONS = "context.selections must be an array of strings like 'MedicationRequest/123'"
# Fields whose absence or wrong JSON type gets its own sentence; `*` is any index or key, which
# fills the `{}` in the sentence.
_SHAPES: dict[tuple[str, ...], str] = {
    (): "request body must be a JSON object",
    ("context",): "context is required and must be an object",
    ("context", "draftOrders"): "context.draftOrders must be a FHIR Bundle object",
    ("context", "draftOrders", "resourceType"): "context.draftOrders must have resourceType "
                                                "Bundle",
    ("context", "draftOrders", "entry"): "context.draftOrders.entry must be an array",
    ("context", "draftOrders", "entry", "*"): "context.draftOrders.entry[{}].resource must be "
                                              "an object",
    ("context", "draftOrders", "entry", "*", "resource"): "context.draftOrders.entry[{}]"
                                                          ".resource must be an object",
    ("context", "selections"): _SELECTIONS,
    ("context", "selections", "*"): _SELECTIONS,
    ("fhirAuthorization",): "fhirAuthorization must be an object",
    ("prefetch",): "prefetch must be an object",
    ("prefetch", "*"): "prefetch.{} must be a FHIR resource, Bundle or null",
}
_BY_TYPE = {"string_type": "must be a non-empty string",
            "string_pattern_mismatch": "must be a non-empty string",
            "string_too_long": "is too long",
            "int_type": "must be an integer"}


def _message(error: ErrorDetails, service: Service) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "wrong_hook":
        return f"service {service.id} serves hook '{service.hook}', not '{value}'"
    if kind == "fhir_server_missing":
        return error["msg"]
    if is_own(kind):
        return f"{path(loc)} {error['msg']}"
    if (shape := sentence(_SHAPES, loc)) is not None:
        return shape
    if kind == "missing" or value is None:
        return f"{path(loc)} is required"
    if is_blank(value):
        kind = "string_pattern_mismatch"
    return f"{path(loc)} {_BY_TYPE.get(kind, 'is not valid')}"


def parse_request(service: Service, body: Any) -> HookRequest:
    """Validate a decoded JSON body against the CDS Hooks 2.0 rules for this service."""
    try:
        call = CALLS[service.hook].model_validate(body)
    except ValidationError as exc:
        # Errors come in field order: the first is what a reader would check first.
        raise BadRequest(_message(exc.errors()[0], service)) from None
    context = call.context
    draft_orders = getattr(context, "draftOrders", None)
    selections = getattr(context, "selections", None)
    authorization = call.fhirAuthorization
    return HookRequest(
        service=service, hook_instance=call.hookInstance, patient_id=context.patientId,
        user_id=context.userId, encounter_id=context.encounterId, prefetch=call.prefetch or {},
        draft_orders=[entry.resource for entry in draft_orders.entry] if draft_orders else [],
        selections=frozenset(selections) if selections is not None else None,
        fhir_server=call.fhirServer,
        access_token=authorization.access_token if authorization else None)
