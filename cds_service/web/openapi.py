"""OpenAPI 3 description of the HTTP API, served at GET /openapi.json (no authentication).

The request schemas mirror what protocol.py accepts (unknown fields allowed, as CDS Hooks
requires), so schema-driven fuzzing exercises the real parser; one path per service lets each
carry its own hook and context.
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import Blueprint, Response

from cds_service.cdshooks.services import SERVICES, Service

blueprint = Blueprint("openapi", __name__)

_TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}
# The parser reads an optional field sent as null as absent; the schema says so.
_OPTIONAL_TEXT = {**_TEXT, "nullable": True}
_OUTCOME_REF = {"$ref": "#/components/schemas/OperationOutcome"}

_ENTRY = {"type": "object", "required": ["resource"],
          "properties": {"resource": {"type": "object"}}}

_SCHEMAS: dict[str, Any] = {
    "OperationOutcome": {
        "type": "object", "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
            "issue": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["severity", "code"],
                "properties": {"severity": {"type": "string"}, "code": {"type": "string"},
                               "diagnostics": {"type": "string"}}}},
        },
    },
    "Discovery": {
        "type": "object", "required": ["services"],
        "properties": {"services": {"type": "array", "items": {
            "type": "object", "required": ["hook", "id", "description"],
            "properties": {
                "hook": {"type": "string"}, "id": {"type": "string"},
                "title": {"type": "string"}, "description": {"type": "string"},
                "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
            }}}},
    },
    "Card": {
        "type": "object", "required": ["uuid", "summary", "indicator", "source"],
        "properties": {
            "uuid": {"type": "string", "format": "uuid"},
            "summary": {"type": "string", "maxLength": 140},
            "indicator": {"type": "string", "enum": ["info", "warning", "critical"]},
            "detail": {"type": "string"},
            "source": {"type": "object", "required": ["label"],
                       "properties": {"label": {"type": "string"}}},
            "suggestions": {"type": "array", "items": {"type": "object"}},
            "selectionBehavior": {"type": "string", "enum": ["at-most-one", "any"]},
            "overrideReasons": {"type": "array", "items": {
                "type": "object", "required": ["system", "code", "display"]}},
            "links": {"type": "array", "items": {
                "type": "object", "required": ["label", "url", "type"],
                "properties": {"type": {"type": "string", "enum": ["absolute", "smart"]}}}},
        },
    },
    "CardsResponse": {
        "type": "object", "required": ["cards"],
        "properties": {"cards": {"type": "array", "items": {"$ref": "#/components/schemas/Card"}},
                       "systemActions": {"type": "array", "items": {"type": "object"}}},
    },
    "FhirAuthorization": {
        "type": "object", "required": ["access_token", "token_type"],
        "properties": {
            "access_token": _TEXT,
            "token_type": {"type": "string", "enum": ["Bearer", "bearer"]},
            "expires_in": {"type": "integer", "nullable": True},
            "scope": _OPTIONAL_TEXT, "subject": _OPTIONAL_TEXT, "patient": _OPTIONAL_TEXT,
        },
    },
    "Prefetch": {
        "description": "Key -> FHIR resource or searchset Bundle; null means known empty. "
                       "A null prefetch is read as none sent.",
        "type": "object", "nullable": True,
        "additionalProperties": {"type": "object", "nullable": True},
    },
    "DraftOrders": {
        "type": "object", "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["Bundle"]},
            # A single entry object instead of an array is tolerated (protocol._draft_orders).
            "entry": {"anyOf": [{"type": "array", "items": _ENTRY}, _ENTRY]},
        },
    },
}


def _context_schema(service: Service) -> dict:
    properties: dict[str, Any] = {
        "userId": {**_TEXT, "maxLength": 256},
        # A FHIR id, optionally as Patient/id (protocol._resource_id).
        "patientId": {"type": "string", "pattern": r"^(Patient/)?[A-Za-z0-9.\-]{1,64}$"},
        "encounterId": {**_OPTIONAL_TEXT, "maxLength": 256},
    }
    if "draftOrders" in service.required_context:
        properties["draftOrders"] = {"$ref": "#/components/schemas/DraftOrders"}
    if "selections" in service.required_context:
        properties["selections"] = {"type": "array", "items": {"type": "string", "minLength": 1}}
    return {"type": "object", "required": list(service.required_context),
            "properties": properties}


def _request_schema(service: Service) -> dict:
    return {
        "type": "object", "required": ["hook", "hookInstance", "context"],
        "properties": {
            "hook": {"type": "string", "enum": [service.hook]},
            "hookInstance": {**_TEXT, "maxLength": 256},
            "context": _context_schema(service),
            "fhirServer": {"type": "string", "pattern": "^https?://[!-~]+$", "nullable": True},
            "fhirAuthorization": {"allOf": [{"$ref": "#/components/schemas/FhirAuthorization"}],
                                  "nullable": True},
            "prefetch": {"$ref": "#/components/schemas/Prefetch"},
        },
    }


def _errors(*statuses: int) -> dict:
    meaning = {400: "Not a valid CDS Hooks request", 401: "Missing or invalid client JWT",
               404: "Unknown service", 412: "Required data could not be obtained",
               413: "Request body too large",
               415: "Body is not JSON (application/json or application/fhir+json, UTF-8)",
               431: "Request headers too large",
               503: "The feedback store is unavailable: send the same report again later "
                    "(Retry-After)"}
    return {str(s): {"description": meaning[s],
                     "content": {"application/json": {"schema": _OUTCOME_REF}}}
            for s in statuses}


def _service_call(service: Service) -> dict:
    return {"post": {
        "operationId": service.id,
        "summary": service.title,
        "description": service.description,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _request_schema(service)}}},
        "responses": {
            "200": {"description": "Cards (an empty list when there is nothing to say)",
                    "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/CardsResponse"}}}},
            **_errors(400, 401, 412, 413, 415, 431),
        },
    }}


_INSTANT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
_FEEDBACK_ENTRY = {
    "type": "object", "required": ["card", "outcome", "outcomeTimestamp"],
    "properties": {
        "card": {**_TEXT, "maxLength": 73, "description": "The card's uuid (or urn:uuid:)"},
        "outcome": {"type": "string", "enum": ["accepted", "overridden"]},
        "outcomeTimestamp": {"type": "string", "pattern": _INSTANT},
        "acceptedSuggestions": {"type": "array", "items": {
            "type": "object", "required": ["id"],
            "properties": {"id": {**_TEXT, "maxLength": 73}}}},
        "overrideReason": {"type": "object", "properties": {
            "reason": {"type": "object", "required": ["system", "code"], "properties": {
                "system": {**_TEXT, "maxLength": 500}, "code": {**_TEXT, "maxLength": 200},
                "display": {**_TEXT, "maxLength": 500}}},
            "userComment": {**_TEXT, "maxLength": 4000}}},
    },
}


def _feedback(service: Service) -> dict:
    return {"post": {
        "operationId": f"{service.id}-feedback",
        "summary": f"Outcomes of the cards of {service.id} (CDS Hooks feedback)",
        "description": "accepted needs acceptedSuggestions; overrideReason only with "
                       "overridden. A card whose record has not reached the store yet is "
                       "accepted when its uuid shows this service issued it.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["feedback"],
            "properties": {"feedback": {"type": "array", "minItems": 1, "maxItems": 1000,
                                        "items": _FEEDBACK_ENTRY}}}}}},
        "responses": {
            "200": {"description": "Stored (a report sent before is counted as a duplicate)",
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["stored", "duplicates"],
                        "properties": {"stored": {"type": "integer", "minimum": 0},
                                       "duplicates": {"type": "integer", "minimum": 0}}}}}},
            **_errors(400, 401, 413, 415, 431, 503),
        },
    }}


def openapi_document() -> dict:
    paths: dict[str, Any] = {"/cds-services": {"get": {
        "operationId": "discovery",
        "summary": "CDS Hooks discovery: the services offered",
        "responses": {"200": {"description": "Services", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Discovery"}}}}, **_errors(401, 431)},
    }}}
    for service in SERVICES.values():
        paths[f"/cds-services/{service.id}"] = _service_call(service)
        paths[f"/cds-services/{service.id}/feedback"] = _feedback(service)
    return {
        "openapi": "3.0.3",
        "info": {"title": "Calciphylaxis risk CDS Hooks service", "version": "1.0",
                 "description": "CDS Hooks 2.0. Every /cds-services call carries the client's "
                                "signed JWT unless the service runs in development mode."},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"cdsHooksJwt": {"type": "http", "scheme": "bearer",
                                                "bearerFormat": "JWT"}},
        },
        "security": [{"cdsHooksJwt": []}],
    }


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return Response(orjson.dumps(openapi_document()), mimetype="application/json")
