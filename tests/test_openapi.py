"""/openapi.json is generated from the models the server validates with: it documents every
route, and its request schemas accept what the server accepts (schemathesis, in test_fuzz.py,
checks the other way round: what the schemas refuse, the server refuses)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import jsonschema_rs
import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service.cdshooks.request import parse_request
from cds_service.cdshooks.services import SERVICES
from cds_service.errors import BadRequest
from cds_service.feedback.validation import parse_feedback
from cds_service.web.openapi import openapi_document

DOCUMENT = openapi_document()
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SERVICE_OF_HOOK = {service.hook: service for service in SERVICES.values()}
REQUESTS = sorted((FIXTURES / "requests").glob("*.json"))


def body_validator(path: str) -> jsonschema_rs.Draft202012Validator:
    """The request body schema of POST `path`, its $refs resolved in the document."""
    schema = DOCUMENT["paths"][path]["post"]["requestBody"]["content"]["application/json"][
        "schema"]
    return jsonschema_rs.Draft202012Validator({**schema, "components": DOCUMENT["components"]})


CALL_SCHEMAS = {service.id: body_validator(f"/cds-services/{service.id}")
                for service in SERVICES.values()}
FEEDBACK_SCHEMA = body_validator("/cds-services/calciphylaxis-order-sign/feedback")


def accepted(service, body) -> bool:
    try:
        parse_request(service, copy.deepcopy(body))
    except BadRequest:
        return False
    return True


@pytest.mark.parametrize("path", REQUESTS, ids=[p.stem for p in REQUESTS])
def test_every_fixture_request_is_valid_for_its_service_and_no_other(path):
    body = json.loads(path.read_text())
    own = SERVICE_OF_HOOK[body["hook"]]
    assert accepted(own, body)
    for service in SERVICES.values():
        assert CALL_SCHEMAS[service.id].is_valid(body) == (service is own), service.id


JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=2)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=4)
TEXT = st.sampled_from(["", " ", "x", "x" * 300, "Patient/pt-1", "pt 1", "Bearer", "MAC",
                        "http://127.0.0.1/fhir", "ftp://x", "order-sign", "patient-view"])
FIELDS = ["hook", "hookInstance", "context", "fhirServer", "fhirAuthorization", "prefetch",
          "context.userId", "context.patientId", "context.encounterId", "context.selections",
          "context.draftOrders", "context.draftOrders.resourceType", "context.draftOrders.entry",
          "fhirAuthorization.access_token", "fhirAuthorization.token_type",
          "fhirAuthorization.expires_in", "prefetch.patient", "prefetch.observations"]
FIXTURE_BODIES = [json.loads((FIXTURES / "requests" / f"{name}.json").read_text()) for name in (
    "reference-patient-view", "reference-order-select", "reference-order-sign")]


@st.composite
def edited_requests(draw) -> dict:
    """A real request with a few fields set to junk, removed or set to plausible text."""
    body = copy.deepcopy(draw(st.sampled_from(FIXTURE_BODIES)))
    body.setdefault("fhirAuthorization", {"access_token": "t", "token_type": "Bearer"})
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        *parents, last = field.split(".")
        node = body
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            if draw(st.booleans()):
                node.pop(last, None)
            else:
                node[last] = draw(TEXT | JUNK)
    return body


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(body=edited_requests())
def test_what_the_server_accepts_its_request_schema_accepts(body):
    for service in SERVICES.values():
        if accepted(service, body):
            assert CALL_SCHEMAS[service.id].is_valid(body)


def test_a_body_the_server_refuses_for_its_shape_the_schema_refuses():
    body = copy.deepcopy(FIXTURE_BODIES[2])
    body["context"]["draftOrders"]["entry"] = [{"resource": "MedicationRequest/1"}]
    service = SERVICE_OF_HOOK["order-sign"]
    assert not accepted(service, body)
    assert not CALL_SCHEMAS[service.id].is_valid(body)


ENTRY = {"card": "urn:uuid:c1", "outcome": "accepted",
         "outcomeTimestamp": "2026-11-20T11:00:00Z", "acceptedSuggestions": [{"id": "s1"}]}
ENTRY_FIELDS = ["card", "outcome", "outcomeTimestamp", "acceptedSuggestions", "overrideReason"]


@st.composite
def feedback_bodies(draw) -> dict:
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        entry = dict(ENTRY)
        if draw(st.booleans()):
            entry.update(outcome="overridden", acceptedSuggestions=None,
                         overrideReason={"reason": {"system": "http://x", "code": "c"}})
        for field in draw(st.lists(st.sampled_from(ENTRY_FIELDS), max_size=2)):
            if draw(st.booleans()):
                entry.pop(field, None)
            else:
                entry[field] = draw(TEXT | JUNK)
        entries.append(entry)
    return {"feedback": entries}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(body=feedback_bodies())
def test_what_the_server_accepts_as_feedback_its_schema_accepts(body):
    try:
        parse_feedback(copy.deepcopy(body), NOW)
    except BadRequest:
        return
    assert FEEDBACK_SCHEMA.is_valid(body)


def test_every_route_of_the_app_is_documented_with_its_methods(client):
    documented = {(path, method.upper()) for path, item in DOCUMENT["paths"].items()
                  for method in item}
    served = set()
    for rule in client.application.url_map.iter_rules():
        if rule.rule == "/openapi.json" or rule.endpoint == "static":
            continue
        # The hook and feedback routes take the service id; the document has a path per service.
        paths = {rule.rule.replace("<service_id>", service_id) for service_id in SERVICES}
        served |= {(path, method) for path in paths for method in rule.methods - {"HEAD",
                                                                                  "OPTIONS"}}
    assert documented == served


def test_errors_are_documented_as_operation_outcomes_where_they_can_happen():
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            assert {"431", "500"} <= statuses, (path, method)
            if method == "post":
                assert {"400", "413", "415"} <= statuses, path
            if operation.get("security") != []:
                assert "401" in statuses, path
    responses = DOCUMENT["components"]["responses"]
    assert set(responses) == {"400", "401", "404", "412", "413", "415", "431", "500", "503"}
    for response in responses.values():
        assert response["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/OperationOutcome"}


def test_every_reference_in_the_document_resolves():
    text = json.dumps(DOCUMENT)
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in DOCUMENT["components"]["schemas"], name
