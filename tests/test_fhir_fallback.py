"""When prefetch is incomplete the service reads the real FHIR server (sekmet-fhir) itself.

Every hook gives the same cards with no prefetch, partial prefetch, `null` keys for what is
empty, and OperationOutcome keys, as with full prefetch (cds-hooks.md P4-P7, P10).
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import ANCHOR, FIXTURES, MANIFEST
from fhir_server import TOKEN, SekmetServer

from cds_service.bootstrap import create_app, create_engine, service_of
from cds_service.fhir.searches import PREFETCH
from cds_service.ops.config import Settings, TrustedClient

SERVICE_OF_HOOK = {"patient-view": "calciphylaxis-patient-view",
                   "order-select": "calciphylaxis-order-select",
                   "order-sign": "calciphylaxis-order-sign"}

def _complete(case: dict) -> bool:
    """The fixture's prefetch holds every declared key (some cases leave keys out on purpose)."""
    return set(PREFETCH) <= set(json.loads((FIXTURES / case["request"]).read_text())["prefetch"])


CASES = [c for c in MANIFEST["cases"]
         if c.get("patient_bundle") and c["expect"]["status"] == 200 and _complete(c)]
OUTCOME = {"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": "timeout", "diagnostics": "prefetch failed"}]}


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory):
    server = SekmetServer(tmp_path_factory.mktemp("sekmet"))
    try:
        loaded = set()
        for case in CASES:
            if case["patient_bundle"] not in loaded:
                server.load(json.loads((FIXTURES / case["patient_bundle"]).read_text()))
                loaded.add(case["patient_bundle"])
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fallback_client():
    app = create_app(Settings(fhir_deadline_seconds=5.0), clock=lambda: ANCHOR)
    return app.test_client()


def _request(case: dict, server: SekmetServer) -> dict:
    body = json.loads((FIXTURES / case["request"]).read_text())
    body["fhirServer"] = server.base
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer",
                                 "expires_in": 300, "scope": "patient/*.read",
                                 "subject": "cds-service"}
    return body


def _post(client, case, body):
    return client.post(f"/cds-services/{SERVICE_OF_HOOK[case['hook']]}", json=body)


def _comparable(response) -> list[tuple]:
    assert response.status_code == 200, response.get_json()
    return [(c["indicator"], c["summary"], c["detail"],
             tuple(s["label"] for s in c.get("suggestions", ())))
            for c in response.get_json()["cards"]]


def _fhir_requests(response) -> int:
    return int(response.headers["Server-Timing"].split('"')[1].split()[0])


def _empty(value) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "Bundle" and not value.get(
        "entry")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_cards_are_the_same_whatever_the_prefetch_state(fhir_server, fallback_client, case):
    full = _request(case, fhir_server)
    reference = _post(fallback_client, case, full)
    assert _fhir_requests(reference) == 0, "complete prefetch must make no FHIR call"
    expected = _comparable(reference)

    none = copy.deepcopy(full)
    del none["prefetch"]
    fetched = _post(fallback_client, case, none)
    assert _comparable(fetched) == expected
    assert _fhir_requests(fetched) >= len(full["prefetch"])

    partial = copy.deepcopy(full)
    for key in list(partial["prefetch"])[::2]:
        del partial["prefetch"][key]
    assert _comparable(_post(fallback_client, case, partial)) == expected

    nulls = copy.deepcopy(full)
    empties = [k for k, v in nulls["prefetch"].items() if _empty(v)]
    for key in empties:
        nulls["prefetch"][key] = None
    answered = _post(fallback_client, case, nulls)
    assert _comparable(answered) == expected
    assert _fhir_requests(answered) == 0, "null means known empty: no query"

    outcomes = copy.deepcopy(full)
    for key in outcomes["prefetch"]:
        outcomes["prefetch"][key] = OUTCOME
    assert _comparable(_post(fallback_client, case, outcomes)) == expected


def test_paged_results_are_all_read(fhir_server):
    """With two results a page, the reference patient's four labs span two pages."""
    from cds_service.fhir.client import FhirFetcher

    settings = Settings(fhir_deadline_seconds=5.0)
    engine = create_engine(settings)
    engine.fetcher = FhirFetcher(settings, engine.knowledge, page_size=2)
    app = create_app(settings, clock=lambda: ANCHOR, engine=engine)
    case = next(c for c in CASES if c["name"] == "reference-patient-view")
    full = _request(case, fhir_server)
    expected = _comparable(_post(app.test_client(), case, full))
    body = copy.deepcopy(full)
    del body["prefetch"]["observations"]
    response = _post(app.test_client(), case, body)
    assert _comparable(response) == expected
    assert "1514" in expected[0][1]
    assert _fhir_requests(response) >= 2  # first page and its next page


def test_paged_prefetch_bundle_is_completed_from_the_server(fhir_server, fallback_client):
    case = next(c for c in CASES if c["name"] == "reference-patient-view")
    full = _request(case, fhir_server)
    expected = _comparable(_post(fallback_client, case, full))
    paged = copy.deepcopy(full)
    observations = paged["prefetch"]["observations"]
    observations["entry"] = [e for e in observations["entry"]
                             if "2731-8" not in json.dumps(e)]  # PTH not on the first page
    observations["link"] = [{"relation": "next", "url": f"{fhir_server.base}/Observation?page=2"}]
    assert _comparable(_post(fallback_client, case, paged)) == expected


def test_unlisted_fhir_server_is_never_contacted(fhir_server):
    settings = Settings(
        development=False, public_base_url="http://localhost/", clients=(TrustedClient(
        iss="https://ehr.example.org", jwks={"keys": []},
        fhir_servers=("https://fhir.example.org/r4",)),))
    app = create_app(settings, clock=lambda: ANCHOR)
    engine = service_of(app).engine
    case = next(c for c in CASES if c["name"] == "reference-patient-view")
    body = _request(case, fhir_server)
    del body["prefetch"]["observations"]
    from cds_service.cdshooks.services import SERVICES
    from cds_service.fhir.client import FetchStats

    stats = FetchStats()
    with pytest.raises(Exception) as raised:
        engine.call(SERVICES["calciphylaxis-patient-view"], body, ANCHOR,
                    client_iss="https://ehr.example.org", stats=stats)
    assert getattr(raised.value, "status", None) == 412
    assert stats.requests == 0
