"""The CDS Hooks request and feedback models (cdshooks/request.py, cdshooks/feedback.py): the
exact sentences a client reads in the 400, what is passed on untouched, and the cost per call."""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime

import pytest
from conftest import FIXTURES

from cds_service.cdshooks.request import parse_request
from cds_service.cdshooks.services import SERVICES
from cds_service.errors import BadRequest
from cds_service.feedback.validation import FeedbackInvalid, parse_feedback

PATIENT_VIEW = SERVICES["calciphylaxis-patient-view"]
ORDER_SELECT = SERVICES["calciphylaxis-order-select"]
ORDER_SIGN = SERVICES["calciphylaxis-order-sign"]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def request(name: str = "reference-order-select") -> dict:
    return json.loads((FIXTURES / "requests" / f"{name}.json").read_text())


def refusal(body: object, service=ORDER_SELECT) -> str:
    with pytest.raises(BadRequest) as refused:
        parse_request(service, body)
    return refused.value.message


def edited(change) -> dict:
    body = request()
    change(body)
    return body


def _context(**fields):
    return lambda body: body["context"].update(fields)


def _draft_orders(**fields):
    return lambda body: body["context"]["draftOrders"].update(fields)


MESSAGES = [
    ([], "request body must be a JSON object"),
    (edited(lambda b: b.pop("hook")), "hook is required"),
    (edited(lambda b: b.update(hook=None)), "hook is required"),
    (edited(lambda b: b.update(hook=7)), "hook must be a non-empty string"),
    (edited(lambda b: b.update(hook="x" * 257)), "hook is too long"),
    (edited(lambda b: b.update(hook="order-sign")),
     "service calciphylaxis-order-select serves hook 'order-select', not 'order-sign'"),
    (edited(lambda b: b.update(hookInstance=" ")), "hookInstance must be a non-empty string"),
    # Blank is what is wrong with it, before its length.
    (edited(lambda b: b.update(hookInstance=" " * 300)),
     "hookInstance must be a non-empty string"),
    (edited(lambda b: b.update(context=None)), "context is required and must be an object"),
    (edited(lambda b: b.update(context=[])), "context is required and must be an object"),
    (edited(_context(userId=None)), "context.userId is required"),
    (edited(_context(patientId="a" * 65)), "context.patientId is not a valid FHIR id"),
    (edited(_context(patientId="pt 1")), "context.patientId is not a valid FHIR id"),
    (edited(_context(patientId="pt-1\n")), "context.patientId is not a valid FHIR id"),
    (edited(_context(patientId="Patient/")), "context.patientId is not a valid FHIR id"),
    (edited(_context(encounterId=5)), "context.encounterId must be a non-empty string"),
    (edited(_context(draftOrders=None)), "context.draftOrders must be a FHIR Bundle object"),
    (edited(_draft_orders(resourceType="MedicationRequest")),
     "context.draftOrders must have resourceType Bundle"),
    (edited(_draft_orders(entry=None)), "context.draftOrders.entry must be an array"),
    (edited(_draft_orders(entry=[{"resource": {}}, 3])),
     "context.draftOrders.entry[1].resource must be an object"),
    (edited(_draft_orders(entry=[{"fullUrl": "urn:uuid:1"}])),
     "context.draftOrders.entry[0].resource must be an object"),
    (edited(_context(selections=["MedicationRequest/1", ""])),
     "context.selections must be an array of strings like 'MedicationRequest/123'"),
    (edited(lambda b: b.update(fhirServer="ftp://ehr.example.org")),
     "fhirServer must be an http(s) URL"),
    (edited(lambda b: b.update(fhirServer="http://ehr.example.org:99999/")),
     "fhirServer must be an http(s) URL"),
    (edited(lambda b: (b.pop("fhirServer"), b.update(fhirAuthorization={"access_token": 1}))),
     "fhirServer is required when fhirAuthorization is sent"),
    (edited(lambda b: b.update(fhirAuthorization="Bearer x")),
     "fhirAuthorization must be an object"),
    (edited(lambda b: b.update(fhirAuthorization={"token_type": "Bearer"})),
     "fhirAuthorization.access_token is required"),
    (edited(lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "MAC"})),
     "fhirAuthorization.token_type must be 'Bearer'"),
    (edited(lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer",
                                                  "expires_in": True})),
     "fhirAuthorization.expires_in must be an integer"),
    (edited(lambda b: b.update(prefetch=[])), "prefetch must be an object"),
    (edited(lambda b: b["prefetch"].update({"my{key}": "Patient/1"})),
     "prefetch.my{key} must be a FHIR resource, Bundle or null"),
    # The first problem, in the order a reader checks: hook before context before prefetch.
    (edited(lambda b: b.update(hook=1, context=1, prefetch=1)),
     "hook must be a non-empty string"),
]


@pytest.mark.parametrize(("body", "says"), MESSAGES, ids=[m[1][:50] for m in MESSAGES])
def test_a_bad_request_is_refused_with_the_services_own_sentence(body, says):
    assert refusal(body) == says


def test_what_is_valid_is_read_as_the_engine_needs_it():
    body = edited(lambda b: b.update(fhirAuthorization={
        "access_token": "s3cret", "token_type": "bearer", "expires_in": 2**70,
        "scope": "patient/*.read", "extension": {"x": 1}}))
    body["context"]["patientId"] = "Patient/pt-reference"
    body["context"]["selections"].append("MedicationRequest/pt-reference-draft-3")
    parsed = parse_request(ORDER_SELECT, body)
    assert parsed.patient_id == "pt-reference"
    assert parsed.selections == frozenset({"MedicationRequest/pt-reference-draft-3"})
    assert parsed.access_token == "s3cret"
    assert "s3cret" not in repr(parsed)
    assert parsed.draft_orders == [e["resource"] for e in body["context"]["draftOrders"]["entry"]]


def test_a_single_draft_order_entry_object_is_read_as_a_list_of_one():
    body = request("reference-order-sign")
    first = body["context"]["draftOrders"]["entry"][0]
    body["context"]["draftOrders"]["entry"] = first
    assert parse_request(ORDER_SIGN, body).draft_orders == [first["resource"]]


def test_patient_view_ignores_order_fields_however_malformed():
    body = request("reference-patient-view")
    body["context"].update(draftOrders="junk", selections=5)
    parsed = parse_request(PATIENT_VIEW, body)
    assert parsed.draft_orders == [] and parsed.selections is None


def test_prefetch_and_draft_orders_are_passed_on_without_fhir_validation():
    """Resources are read by the rules as far as they need: junk inside one is not a 400."""
    body = request("reference-order-sign")
    junk = {"resourceType": "MedicationRequest", "status": ["not", "a", "code"], "intent": 3}
    body["context"]["draftOrders"]["entry"].append({"resource": junk})
    body["prefetch"]["observations"]["entry"].append({"resource": {"resourceType": 5}})
    body["prefetch"]["somethingOfTheEhrs"] = None
    parsed = parse_request(ORDER_SIGN, copy.deepcopy(body))
    assert parsed.draft_orders[-1] == junk
    assert parsed.prefetch == body["prefetch"]


def test_a_null_prefetch_is_none_sent():
    body = edited(lambda b: b.update(prefetch=None))
    assert parse_request(ORDER_SELECT, body).prefetch == {}


def test_parsing_a_hook_call_stays_cheap():
    """Every hook call pays for it (the budget of a whole call is a few ms): ~20 us today,
    when validating the prefetched resources as FHIR would cost tens of ms."""
    body = request("reference-patient-view")
    parse_request(PATIENT_VIEW, body)
    calls = 500
    started = time.perf_counter()
    for _ in range(calls):
        parse_request(PATIENT_VIEW, body)
    assert (time.perf_counter() - started) / calls < 0.0005


# --- feedback ----------------------------------------------------------------------------------

ACCEPTED = {"card": "urn:uuid:c1", "outcome": "accepted", "outcomeTimestamp":
            "2026-11-20T11:00:00.123456789+01:00", "acceptedSuggestions": [
                {"id": "s1"}, {"id": "urn:uuid:s1"}, {"id": "s2"}]}
OVERRIDDEN = {"card": "c2", "outcome": "overridden", "outcomeTimestamp": "2026-11-20T12:04:00Z",
              "overrideReason": {"reason": {"system": "http://x", "code": "c"},
                                 "userComment": "seen", "extension": []}}


def problems(body: object) -> list[str]:
    with pytest.raises(FeedbackInvalid) as refused:
        parse_feedback(body, NOW)
    return [str(problem) for problem in refused.value.problems]


def test_feedback_entries_are_read_with_urns_as_ids_and_suggestions_once():
    accepted, overridden = parse_feedback({"feedback": [ACCEPTED, OVERRIDDEN]}, NOW)
    assert (accepted.index, accepted.card_uuid, accepted.accepted_suggestions) == (
        0, "c1", ("s1", "s2"))
    assert accepted.outcome_at == datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=UTC)
    assert (overridden.reason_system, overridden.reason_code, overridden.reason_display,
            overridden.user_comment) == ("http://x", "c", None, "seen")


def test_every_problem_of_every_entry_is_reported_in_order():
    assert problems({"feedback": [
        ACCEPTED | {"card": "", "outcome": "ACCEPTED", "outcomeTimestamp": "2026-11-20"},
        OVERRIDDEN,
        7,
        ACCEPTED | {"acceptedSuggestions": [{"id": "x" * 74}, "s3"]},
        OVERRIDDEN | {"acceptedSuggestions": [{"id": "s1"}], "overrideReason": {}},
        ACCEPTED | {"acceptedSuggestions": None, "overrideReason": {"userComment": 1}},
        OVERRIDDEN | {"outcomeTimestamp": "2026-11-20T12:06:00Z", "overrideReason": {
            "userComment": " ", "reason": {"code": "x" * 201, "display": None}}},
        OVERRIDDEN | {"outcomeTimestamp": "2026-02-30T10:00:00Z", "overrideReason": 3},
    ]}) == [
        "feedback[0].card: must be a non-empty string",
        "feedback[0].outcome: must be 'accepted' or 'overridden'",
        "feedback[0].outcomeTimestamp: must be an instant with a zone, like "
        "2026-11-20T14:05:00Z",
        "feedback[2]: must be an object",
        "feedback[3].acceptedSuggestions[0].id: is longer than 73 characters",
        "feedback[3].acceptedSuggestions[1]: must be an object with an id",
        "feedback[4].acceptedSuggestions: is only for an accepted outcome",
        "feedback[4].overrideReason: needs a reason, a userComment or both",
        "feedback[5].acceptedSuggestions: is required when the outcome is accepted",
        "feedback[5].overrideReason: is only for an overridden outcome",
        "feedback[6].outcomeTimestamp: is in the future",
        "feedback[6].overrideReason.userComment: must be a non-empty string",
        "feedback[6].overrideReason.reason.system: is required",
        "feedback[6].overrideReason.reason.code: is longer than 200 characters",
        "feedback[7].outcomeTimestamp: is not a valid date and time",
        "feedback[7].overrideReason: must be an object with a reason Coding and/or a "
        "userComment",
    ]


@pytest.mark.parametrize(("body", "says"), [
    ([], "body: must be an object with a feedback array"),
    ({"feedback": None}, "feedback: is required and must be an array"),
    ({"feedback": []}, "feedback: must have at least one entry"),
    ({"feedback": [7] * 1001},
     "feedback: has more than 1000 entries; send them in several requests"),
])
def test_a_batch_that_is_not_a_list_of_entries_is_one_problem(body, says):
    assert problems(body) == [says]
