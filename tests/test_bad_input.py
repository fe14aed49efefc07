"""Bad input is answered with the right 4xx and an OperationOutcome saying what is wrong, and the
service keeps serving afterwards (docs/cds-hooks.md Q1, P9, 'Status codes').
"""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Callable

import pytest
from conftest import FIXTURES

PATIENT_VIEW = "/cds-services/calciphylaxis-patient-view"
ORDER_SELECT = "/cds-services/calciphylaxis-order-select"
ORDER_SIGN = "/cds-services/calciphylaxis-order-sign"
JSON = "application/json"
REFERENCE_SUMMARY = "Calciphylaxis risk on dialysis: calcium acetate, PTH 1514 pg/mL, calcitriol"
PREFETCH_BUNDLES = ("conditions", "procedures", "medications", "medicationStatements",
                    "observations")


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / "requests" / f"{name}.json").read_text())


def patient_view() -> dict:
    return fixture("reference-patient-view")


def assert_outcome(response, status: int, says: str) -> None:
    """`status`, a JSON OperationOutcome, and issue[0].diagnostics matching the regex `says`."""
    assert response.status_code == status, response.get_data()[:300]
    assert response.mimetype == JSON
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    diagnostics = body["issue"][0]["diagnostics"]
    assert re.search(says, diagnostics, re.IGNORECASE), diagnostics


def assert_still_serves(client) -> None:
    response = client.post(PATIENT_VIEW, json=patient_view())
    assert response.status_code == 200
    assert [c["summary"] for c in response.get_json()["cards"]] == [REFERENCE_SUMMARY]


def _raw(text: str, content_type: str = JSON) -> Callable[[], tuple[str, bytes, str]]:
    return lambda: (PATIENT_VIEW, text.encode(), content_type)


def _edit(change: Callable[[dict], object], url: str = PATIENT_VIEW,
          base: str = "reference-patient-view") -> Callable[[], tuple[str, bytes, str]]:
    def make():
        body = fixture(base)
        change(body)
        return url, json.dumps(body).encode(), JSON
    return make


def _delete(path: str) -> Callable[[dict], None]:
    *parents, last = path.split(".")

    def change(body: dict) -> None:
        node = body
        for key in parents:
            node = node[key]
        del node[last]
    return change


def _set(path: str, value: object) -> Callable[[dict], None]:
    *parents, last = path.split(".")

    def change(body: dict) -> None:
        node = body
        for key in parents:
            node = node[key]
        node[last] = value
    return change


REFERENCE_TEXT = json.dumps(patient_view())

BAD_REQUESTS = [
    # (id, request maker, status, what the diagnostics must say)
    ("truncated-json", _raw(REFERENCE_TEXT[: len(REFERENCE_TEXT) // 2]), 400, r"JSON"),
    ("trailing-garbage", _raw(REFERENCE_TEXT + " }garbage"), 400, r"JSON"),
    ("empty-body", _raw(""), 400, r"empty"),
    ("text-plain", _raw(REFERENCE_TEXT, "text/plain"), 415, r"application/json"),
    ("form-encoded", _raw(REFERENCE_TEXT, "application/x-www-form-urlencoded"), 415,
     r"application/json"),
    ("body-array", _raw("[]"), 400, r"object"),
    ("body-number", _raw("42"), 400, r"object"),
    ("body-string", _raw('"patient-view"'), 400, r"object"),
    ("body-null", _raw("null"), 400, r"object"),
    ("missing-hook", _edit(_delete("hook")), 400, r"\bhook\b"),
    ("missing-hookInstance", _edit(_delete("hookInstance")), 400, r"\bhookInstance\b"),
    ("missing-context", _edit(_delete("context")), 400, r"\bcontext\b"),
    ("missing-patientId", _edit(_delete("context.patientId")), 400, r"\bpatientId\b"),
    ("missing-userId", _edit(_delete("context.userId")), 400, r"\buserId\b"),
    ("empty-hookInstance", _edit(_set("hookInstance", "")), 400, r"\bhookInstance\b"),
    ("hook-number", _edit(_set("hook", 7)), 400, r"\bhook\b"),
    ("context-string", _edit(_set("context", "pt-reference")), 400, r"\bcontext\b"),
    ("patientId-list", _edit(_set("context.patientId", ["pt-reference"])), 400,
     r"\bpatientId\b"),
    ("userId-object", _edit(_set("context.userId", {"id": "x"})), 400, r"\buserId\b"),
    ("prefetch-list", _edit(_set("prefetch", [])), 400, r"\bprefetch\b"),
    ("prefetch-value-string", _edit(_set("prefetch.patient", "Patient/pt-reference")), 400,
     r"\bprefetch\.patient\b"),
    ("prefetch-value-number", _edit(_set("prefetch.observations", 3)), 400,
     r"\bprefetch\.observations\b"),
    ("selections-string",
     _edit(_set("context.selections", "MedicationRequest/pt-reference-draft-3"), ORDER_SELECT,
           "reference-order-select"), 400, r"\bselections\b"),
    ("selections-of-numbers",
     _edit(_set("context.selections", [3]), ORDER_SELECT, "reference-order-select"), 400,
     r"\bselections\b"),
    ("missing-selections",
     _edit(_delete("context.selections"), ORDER_SELECT, "reference-order-select"), 400,
     r"\bselections\b"),
    ("draftOrders-list",
     _edit(_set("context.draftOrders", []), ORDER_SIGN, "reference-order-sign"), 400,
     r"\bdraftOrders\b"),
    ("draftOrders-not-a-bundle",
     _edit(_set("context.draftOrders.resourceType", "MedicationRequest"), ORDER_SIGN,
           "reference-order-sign"), 400, r"\bdraftOrders\b"),
    ("missing-draftOrders",
     _edit(_delete("context.draftOrders"), ORDER_SIGN, "reference-order-sign"), 400,
     r"\bdraftOrders\b"),
    ("fhirAuthorization-without-fhirServer",
     _edit(lambda b: (b.pop("fhirServer", None), b.update(fhirAuthorization={
         "access_token": "secret-token", "token_type": "Bearer", "expires_in": 300,
         "scope": "patient/*.read", "subject": "cds-service"}))), 400, r"\bfhirServer\b"),
    ("access_token-number",
     _edit(_set("fhirAuthorization", {"access_token": 12345, "token_type": "Bearer",
                                      "expires_in": 300, "scope": "patient/*.read",
                                      "subject": "cds-service"})), 400, r"\baccess_token\b"),
    ("fhirAuthorization-string", _edit(_set("fhirAuthorization", "Bearer abc")), 400,
     r"\bfhirAuthorization\b"),
    ("fhirServer-not-a-url", _edit(_set("fhirServer", "not a url")), 400, r"\bfhirServer\b"),
    ("order-sign-body-to-patient-view",
     _edit(lambda b: None, PATIENT_VIEW, "reference-order-sign"), 400, r"order-sign"),
    ("patient-view-body-to-order-sign",
     _edit(lambda b: None, ORDER_SIGN, "reference-patient-view"), 400, r"patient-view"),
]


@pytest.mark.parametrize(("make", "status", "says"), [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_is_answered_with_4xx_operation_outcome(client, make, status, says):
    url, data, content_type = make()
    assert_outcome(client.post(url, data=data, content_type=content_type), status, says)
    assert_still_serves(client)


def test_access_token_is_never_echoed_in_an_error(client):
    body = patient_view()
    del body["fhirServer"]
    body["fhirAuthorization"] = {"access_token": "s3cret-t0ken", "token_type": "Bearer",
                                 "expires_in": 300, "scope": "patient/*.read", "subject": "x"}
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 400
    assert b"s3cret-t0ken" not in response.get_data()


def test_unknown_service_id_is_404(client):
    response = client.post("/cds-services/no-such-service", json=patient_view())
    assert_outcome(response, 404, r"no-such-service")
    assert_still_serves(client)


def test_get_on_a_service_is_405_with_json(client):
    response = client.get(PATIENT_VIEW)
    assert_outcome(response, 405, r"method")
    assert_still_serves(client)


def test_405_names_the_allowed_method_in_an_allow_header(client):
    response = client.get(PATIENT_VIEW)
    assert response.status_code == 405
    assert "POST" in response.headers.get("Allow", "")


def test_deeply_nested_prefetch_is_400_not_a_crash(client):
    depth = 100_000
    text = REFERENCE_TEXT.replace('"prefetch": {', '"prefetch": {"deep": ' + "[" * depth
                                  + "]" * depth + ", ", 1)
    assert len(text) > 2 * depth
    response = client.post(PATIENT_VIEW, data=text, content_type=JSON)
    assert_outcome(response, 400, r"JSON|depth|nest")
    assert_still_serves(client)


def test_unclosed_deep_nesting_is_400(client):
    response = client.post(PATIENT_VIEW, data='{"hook": "patient-view", "prefetch": '
                           + "[" * 100_000, content_type=JSON)
    assert_outcome(response, 400, r"JSON")
    assert_still_serves(client)


def _big_body() -> bytes:
    body = patient_view()
    body["padding"] = "x" * (5 * 1024 * 1024)
    return json.dumps(body).encode()


def test_body_over_the_limit_is_413(client):
    response = client.post(PATIENT_VIEW, data=_big_body(), content_type=JSON)
    assert_outcome(response, 413, r"large|limit|exceed")
    assert_still_serves(client)


def test_chunked_body_over_the_limit_is_413(client):
    response = client.post(PATIENT_VIEW, input_stream=io.BytesIO(_big_body()),
                           headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert_outcome(response, 413, r"large|limit|exceed")


def test_chunked_body_under_the_limit_is_served(client):
    """Control for the test above: the chunked path itself works."""
    response = client.post(PATIENT_VIEW, input_stream=io.BytesIO(REFERENCE_TEXT.encode()),
                           headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 200
    assert [c["summary"] for c in response.get_json()["cards"]] == [REFERENCE_SUMMARY]


# -- P9: data that cannot be had is 412 --------------------------------------------------------
# Without a usable fhirServer the missing data can be had neither from prefetch nor by a query.
UNLISTED_FHIR_SERVER = "https://ehr.example.org/fhir"  # not allow-listed: never contacted


def test_missing_prefetch_fixture_is_412(client):
    response = client.post(PATIENT_VIEW, json=fixture("missing-prefetch"))
    assert_outcome(response, 412, r"prefetch")
    assert_still_serves(client)


@pytest.mark.parametrize("key", ["patient", "medications", "observations"])
def test_missing_prefetch_key_and_no_fhir_server_is_412(client, key):
    body = patient_view()
    del body["prefetch"][key]
    del body["fhirServer"]
    assert_outcome(client.post(PATIENT_VIEW, json=body), 412, r"prefetch")
    assert_still_serves(client)


def test_missing_prefetch_key_and_an_unlisted_fhir_server_is_412(client):
    body = patient_view()
    del body["prefetch"]["conditions"]
    body["fhirServer"] = UNLISTED_FHIR_SERVER
    assert_outcome(client.post(PATIENT_VIEW, json=body), 412, r"prefetch")


def test_request_with_no_prefetch_and_no_fhir_server_is_412(client):
    body = patient_view()
    del body["prefetch"]
    del body["fhirServer"]
    assert_outcome(client.post(PATIENT_VIEW, json=body), 412, r"prefetch")


def test_operation_outcome_prefetch_counts_as_missing_412(client):
    body = patient_view()
    del body["fhirServer"]
    body["prefetch"]["medications"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "EHR fetch timed out"}]}
    assert_outcome(client.post(PATIENT_VIEW, json=body), 412, r"prefetch")


def test_null_prefetch_key_is_known_empty_not_412(client):
    """P5 is the contrast to P4: `null` means looked and found nothing, so no 412."""
    body = patient_view()
    del body["fhirServer"]
    body["prefetch"]["medicationStatements"] = None
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200
    assert [c["summary"] for c in response.get_json()["cards"]] == [REFERENCE_SUMMARY]


# -- junk inside prefetch Bundles is tolerated --------------------------------------------------
JUNK_ENTRIES = ["a string", 42, None, True, [], {}, {"resource": None}, {"resource": "text"},
                {"resource": 7}, {"fullUrl": "urn:uuid:1"}]
NO_RESOURCE_TYPE = [{"resource": {}}, {"resource": {"id": "no-type"}},
                    {"resource": {"resourceType": None, "id": "null-type"}},
                    {"resource": {"resourceType": 12, "id": "number-type"}},
                    {"resource": {"resourceType": "NoSuchResource", "id": "x"}}]
WRONG_TYPES = [
    {"resource": {"resourceType": "Observation", "id": "junk-1", "status": 5, "code": ["x"],
                  "subject": "Patient/pt-reference", "valueQuantity": {"value": "lots"}}},
    {"resource": {"resourceType": "Observation", "id": "junk-2", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2731-8"}]},
                  "subject": {"reference": "Patient/pt-reference"}, "effectiveDateTime": 12,
                  "valueQuantity": {"value": "lots", "unit": 3}}},
    {"resource": {"resourceType": "Observation", "id": "junk-3", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": ["2731-8"]}]},
                  "subject": {"reference": "Patient/pt-reference"},
                  "effectiveDateTime": "2026-11-19T00:00:00Z", "valueQuantity": [1514]}},
    {"resource": {"resourceType": "Observation", "id": "junk-4", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2731-8"}]},
                  "subject": {"reference": "Patient/pt-reference"},
                  "effectiveDateTime": "2026-11-19T00:00:00Z",
                  "valueQuantity": {"value": True, "unit": "pg/mL"}}},
    {"resource": {"resourceType": "MedicationRequest", "id": "junk-5", "status": ["active"],
                  "intent": 3, "subject": {"reference": "Patient/pt-reference"},
                  "medicationCodeableConcept": "warfarin"}},
    {"resource": {"resourceType": "MedicationRequest", "id": "junk-6", "status": "active",
                  "intent": "order", "subject": {"reference": "Patient/pt-reference"},
                  "medicationCodeableConcept": {"text": 5, "coding": "warfarin"}}},
    {"resource": {"resourceType": "MedicationRequest", "id": "junk-7", "status": "active",
                  "intent": "order", "subject": {"reference": "Patient/pt-reference"},
                  "medicationCodeableConcept": {"coding": [
                      {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": 11289}]},
                  "authoredOn": []}},
    {"resource": {"resourceType": "Condition", "id": "junk-8",
                  "subject": {"reference": "Patient/pt-reference"}, "clinicalStatus": "active",
                  "code": {"coding": [{"system": "http://snomed.info/sct", "code": ["x"]}]}}},
    {"resource": {"resourceType": "Procedure", "id": "junk-9", "status": None,
                  "subject": {"reference": "Patient/pt-reference"},
                  "code": {"coding": [{"system": "http://snomed.info/sct", "code": "302497006"}]},
                  "performedDateTime": {"x": 1}}},
]


def _with_junk(entries: list) -> dict:
    body = patient_view()
    for key in PREFETCH_BUNDLES:
        bundle = body["prefetch"][key]
        bundle["entry"] = copy.deepcopy(entries) + bundle.get("entry", [])
    return body


@pytest.mark.parametrize("entries", [JUNK_ENTRIES, NO_RESOURCE_TYPE, WRONG_TYPES],
                         ids=["non-object-entries", "no-resource-type", "wrong-field-types"])
def test_junk_prefetch_entries_are_skipped_and_the_card_still_fires(client, entries):
    response = client.post(PATIENT_VIEW, json=_with_junk(entries))
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert [(c["indicator"], c["summary"]) for c in cards] == [("warning", REFERENCE_SUMMARY)]
    assert_still_serves(client)


@pytest.mark.parametrize("entry", ["not a list", 5, None, {"resource": {}}])
def test_bundle_entry_of_the_wrong_type_is_tolerated(client, entry):
    body = patient_view()
    body["prefetch"]["conditions"]["entry"] = entry  # the ESRD condition is lost
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200
    summaries = [c["summary"] for c in response.get_json()["cards"]]
    assert summaries and "calcium acetate" in summaries[0]


@pytest.mark.parametrize("patient", [{"resourceType": "Patient", "gender": 5},
                                     {"resourceType": "Patient", "birthDate": [1]},
                                     {"resourceType": "Patient", "deceasedBoolean": "yes"},
                                     {"resourceType": "Patient", "id": 5},
                                     {"no": "resourceType"}])
def test_malformed_patient_resource_is_tolerated(client, patient):
    body = patient_view()
    body["prefetch"]["patient"] = patient
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 200
    summaries = [c["summary"] for c in response.get_json()["cards"]]
    assert summaries and "calcium acetate" in summaries[0]


def _deep_extension_on_pth(depth: int) -> str:
    body = patient_view()
    [pth] = [e["resource"] for e in body["prefetch"]["observations"]["entry"]
             if e["resource"]["code"]["coding"][0]["code"] == "2731-8"]
    pth["extension"] = "@DEEP@"
    return json.dumps(body).replace('"@DEEP@"', "[" * depth + "]" * depth)


def test_moderately_nested_junk_in_a_resource_loses_only_that_resource(client):
    response = client.post(PATIENT_VIEW, data=_deep_extension_on_pth(100), content_type=JSON)
    assert response.status_code == 200
    summaries = [c["summary"] for c in response.get_json()["cards"]]
    assert summaries == ["Calciphylaxis risk factors to review: calcium acetate, calcitriol"]


def test_deeply_nested_junk_never_silently_suppresses_the_warning(client):
    """1000 levels pass orjson's 1024 limit: refuse the request (400) or lose only that resource;
    never answer 200 with no cards (a RecursionError swallowed by app.py's catch-all did that)."""
    response = client.post(PATIENT_VIEW, data=_deep_extension_on_pth(1000), content_type=JSON)
    if response.status_code == 400:
        assert_outcome(response, 400, r"nest|depth|deep")
    else:
        assert response.status_code == 200
        summaries = [c["summary"] for c in response.get_json()["cards"]]
        assert summaries == ["Calciphylaxis risk factors to review: calcium acetate, calcitriol"]
    assert_still_serves(client)
