"""Issue 12, strict requests: duplicate JSON keys, foreign media types and charsets, oversized
headers, each answered with the service's JSON error (and CORS headers), and the service keeps
serving."""

from __future__ import annotations

import json

import pytest
from test_bad_input import PATIENT_VIEW, assert_outcome, assert_still_serves, patient_view

from cds_service.web.header_limits import MAX_FIELD_BYTES, MAX_TOTAL_BYTES


def test_a_second_context_does_not_silently_replace_the_patient(client):
    body = patient_view()
    text = json.dumps(body)
    other = json.dumps({**body["context"], "patientId": "someone-else"})
    # The same object with "context" twice: the last one used to win without a word.
    doubled = text[:-1] + f', "context": {other}}}'
    response = client.post(PATIENT_VIEW, data=doubled, content_type="application/json")
    assert_outcome(response, 400, r'duplicate key "context"')
    assert_still_serves(client)


def test_a_duplicate_key_deep_inside_a_prefetched_resource_is_refused(client):
    text = json.dumps(patient_view()).replace('"status": "final"', '"status": "final", '
                                              '"status": "entered-in-error"', 1)
    assert '"entered-in-error"' in text
    response = client.post(PATIENT_VIEW, data=text, content_type="application/json")
    assert_outcome(response, 400, r'duplicate key "status"')


@pytest.mark.parametrize("content_type", [
    "application/x-evil+json", "application/json; charset=latin-1",
    "application/json; charset=utf-16", "text/json",
])
def test_only_json_media_types_in_utf_8_are_accepted(client, content_type):
    response = client.post(PATIENT_VIEW, data=json.dumps(patient_view()),
                           content_type=content_type)
    assert_outcome(response, 415, r"application/json|UTF-8")


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "application/json;charset=UTF-8",
    "application/fhir+json", "application/fhir+json; charset=utf-8",
])
def test_json_and_fhir_json_in_utf_8_are_accepted(client, content_type):
    response = client.post(PATIENT_VIEW, data=json.dumps(patient_view()),
                           content_type=content_type)
    assert response.status_code == 200
    assert response.get_json()["cards"]


def test_nan_is_not_json(client):
    text = json.dumps(patient_view())[:-1] + ', "x": NaN}'
    assert_outcome(client.post(PATIENT_VIEW, data=text, content_type="application/json"), 400,
                   r"not valid JSON")


@pytest.mark.parametrize("headers", [
    {"X-Padding": "a" * (MAX_FIELD_BYTES + 1)},
    {f"X-Pad-{n}": "a" * 4000 for n in range(MAX_TOTAL_BYTES // 4000 + 1)},
    {"Authorization": "Bearer " + "a" * 9000},
])
def test_oversized_headers_get_the_json_431_with_cors(client, headers):
    response = client.post(PATIENT_VIEW, json=patient_view(),
                           headers={"Origin": "https://sandbox.cds-hooks.org", **headers})
    assert_outcome(response, 431, r"header")
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    assert_still_serves(client)
