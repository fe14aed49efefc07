"""OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json (no authentication).

The request bodies' schemas are generated from the models the server validates them with
(cdshooks/request.py, cdshooks/feedback.py), so the document says exactly what is accepted and
schema-driven fuzzing exercises the real parser. One path per service lets each carry its own
hook and context. The responses are described by the TypedDicts below.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired
from uuid import UUID

import orjson
from flask import Blueprint, Response
from pydantic import BaseModel, Field, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from cds_service.cdshooks.feedback import FeedbackRequest
from cds_service.cdshooks.request import CALLS
from cds_service.cdshooks.services import SERVICES, Service

blueprint = Blueprint("openapi", __name__)

SCHEMAS = "#/components/schemas/{model}"


# --- the responses ------------------------------------------------------------------------------

class Issue(TypedDict):
    severity: str
    code: str
    diagnostics: NotRequired[str]
    expression: NotRequired[list[str]]  # feedback: the entry, e.g. feedback[2].card


class OperationOutcome(TypedDict):
    """Every error, as CDS Hooks 3.0 recommends."""

    resourceType: Literal["OperationOutcome"]
    issue: Annotated[list[Issue], Field(min_length=1)]


class ServiceDescription(TypedDict):
    hook: str
    id: str
    title: NotRequired[str]
    description: str
    prefetch: NotRequired[dict[str, str]]


class Discovery(TypedDict):
    services: list[ServiceDescription]


class Source(TypedDict):
    label: str


class OverrideReasonCoding(TypedDict):
    system: str
    code: str
    display: str


class Link(TypedDict):
    label: str
    url: str
    type: Literal["absolute", "smart"]


class Card(TypedDict):
    uuid: UUID
    summary: Annotated[str, Field(max_length=140)]
    indicator: Literal["info", "warning", "critical"]
    detail: NotRequired[str]
    source: Source
    suggestions: NotRequired[list[dict[str, Any]]]
    selectionBehavior: NotRequired[Literal["at-most-one", "any"]]
    overrideReasons: NotRequired[list[OverrideReasonCoding]]
    links: NotRequired[list[Link]]


class CardsResponse(TypedDict):
    cards: list[Card]
    systemActions: NotRequired[list[dict[str, Any]]]


class FeedbackResult(TypedDict):
    stored: Annotated[int, Field(ge=0)]
    duplicates: Annotated[int, Field(ge=0)]  # reports sent before


class Health(TypedDict):
    status: Literal["ok"]


class Readiness(TypedDict):
    status: Literal["ready", "not ready"]
    failing: list[str]


class _Untitled(GenerateJsonSchema):
    """No title on each property: a field's name is its title ("Hookinstance" says less)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _schema(shape: Any, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a model or TypedDict, its parts moved to components/schemas."""
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        schema = shape.model_json_schema(ref_template=SCHEMAS, schema_generator=_Untitled)
    else:
        schema = TypeAdapter(shape).json_schema(ref_template=SCHEMAS,
                                                schema_generator=_Untitled)
    for name, part in schema.pop("$defs", {}).items():
        if components.setdefault(name, part) != part:
            raise ValueError(f"two schemas named {name}")
    return schema


def _ref(shape: Any, components: dict[str, Any]) -> dict[str, str]:
    components[shape.__name__] = _schema(shape, components)
    return {"$ref": SCHEMAS.format(model=shape.__name__)}


# --- the operations ------------------------------------------------------------------------------

_ERRORS = {
    400: "Not a valid CDS Hooks request", 401: "Missing or invalid client JWT",
    404: "Unknown service", 412: "Required data could not be obtained",
    413: "Request body too large",
    415: "Body is not JSON (application/json or application/fhir+json, UTF-8)",
    431: "Request headers too large", 500: "Internal error (logged with the call's trace id)",
    503: "The feedback store is unavailable: send the same report again later (Retry-After)"}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": f"#/components/responses/{status}"} for status in statuses}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _service_call(service: Service, components: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "operationId": service.id,
        "summary": service.title,
        "description": service.description,
        "requestBody": {"required": True,
                        "content": _json(_schema(CALLS[service.hook], components))},
        "responses": {
            "200": {"description": "Cards (an empty list when there is nothing to say)",
                    "headers": {"Server-Timing": {
                        "description": "How many FHIR requests the call needed",
                        "schema": {"type": "string"}}},
                    "content": _json(_ref(CardsResponse, components))},
            **_errors(400, 401, 412, 413, 415, 431, 500),
        },
    }}


def _feedback(service: Service, components: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "operationId": f"{service.id}-feedback",
        "summary": f"Outcomes of the cards of {service.id} (CDS Hooks feedback)",
        "description": "accepted needs acceptedSuggestions; overrideReason only with "
                       "overridden; an outcomeTimestamp no later than now. A card whose record "
                       "has not reached the store yet is accepted when its uuid shows this "
                       "service issued it. Each problem is an issue naming its entry.",
        "requestBody": {"required": True, "content": _json(_ref(FeedbackRequest, components))},
        "responses": {
            "200": {"description": "Stored (a report sent before is counted as a duplicate)",
                    "content": _json(_ref(FeedbackResult, components))},
            **_errors(400, 401, 413, 415, 431, 500, 503),
        },
    }}


def _unauthenticated_get(operation: str, summary: str, responses: dict[str, Any]) -> dict:
    return {"get": {"operationId": operation, "summary": summary, "security": [],
                    "responses": {**responses, **_errors(431, 500)}}}


def openapi_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {"/cds-services": {"get": {
        "operationId": "discovery",
        "summary": "CDS Hooks discovery: the services offered",
        "responses": {"200": {"description": "Services",
                               "content": _json(_ref(Discovery, components))},
                      **_errors(401, 431, 500)},
    }}}
    for service in SERVICES.values():
        paths[f"/cds-services/{service.id}"] = _service_call(service, components)
        paths[f"/cds-services/{service.id}/feedback"] = _feedback(service, components)
    paths["/health"] = _unauthenticated_get("health", "The process is alive", {
        "200": {"description": "Alive", "content": _json(_ref(Health, components))}})
    readiness = _ref(Readiness, components)
    paths["/ready"] = _unauthenticated_get("ready", "Able to answer hook calls", {
        "200": {"description": "Ready", "content": _json(readiness)},
        "503": {"description": "Not ready: the failing checks", "content": _json(readiness)}})
    paths["/metrics"] = _unauthenticated_get("metrics", "Prometheus metrics", {
        "200": {"description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}})
    paths["/rules"] = _unauthenticated_get("rules", "How the check decides (HTML)", {
        "200": {"description": "The rules page a card's source.url opens",
                "content": {"text/html": {"schema": {"type": "string"}}}},
        "304": {"description": "Not modified (If-None-Match)"}})
    outcome = _ref(OperationOutcome, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Calciphylaxis risk CDS Hooks service", "version": "1.0",
                 "description": "CDS Hooks 2.0. Every /cds-services call carries the client's "
                                "signed JWT unless the service runs in development mode."},
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {str(status): {"description": meaning, "content": _json(outcome),
                                        **({"headers": _ERROR_HEADERS[status]}
                                           if status in _ERROR_HEADERS else {})}
                          for status, meaning in _ERRORS.items()},
            "securitySchemes": {"cdsHooksJwt": {"type": "http", "scheme": "bearer",
                                                "bearerFormat": "JWT"}},
        },
        "security": [{"cdsHooksJwt": []}],
    }


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return Response(orjson.dumps(openapi_document()), mimetype="application/json")
