"""Hostile and random input: schema-driven fuzzing of the HTTP API (schemathesis, from our own
OpenAPI document) and property tests of the request parser and the assessment with FHIR-shaped
junk. Whatever comes in: no 5xx, no exception, every error a JSON OperationOutcome, and no
fuzzed fhirServer is ever contacted (the network is closed for this module)."""

from __future__ import annotations

import json
import socket
import tempfile
import time
import uuid
from pathlib import Path

import jwt
import pytest
import schemathesis
from conftest import ANCHOR, FIXTURES
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from cds_service.bootstrap import create_app, service_of
from cds_service.cdshooks.request import HookRequest, parse_request
from cds_service.cdshooks.services import SERVICES
from cds_service.errors import DataUnavailable, ServiceError
from cds_service.fhir.nesting import MAX_JSON_DEPTH
from cds_service.fhir.searches import PREFETCH
from cds_service.ops.config import Settings, load_settings

REFERENCE = json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())
ORDER_SIGN = SERVICES["calciphylaxis-order-sign"]
ORDER_SELECT = SERVICES["calciphylaxis-order-select"]
PATIENT_VIEW = SERVICES["calciphylaxis-patient-view"]


# --- no network: a fuzzed fhirServer must never be contacted ----------------------------------

class ClosedNetwork:
    """Records every outbound connection or name lookup attempted, and refuses it."""

    def __init__(self):
        self.attempts: list[object] = []

    def refuse(self, *args, **kwargs):
        self.attempts.append(args[1] if len(args) > 1 else args)
        raise OSError("network closed in fuzz tests")


class RecordingFetcher:
    """Stands in for the FHIR client: notes what it was asked and answers like an unreachable
    server would (412), so the engine's fallback path is exercised without any I/O."""

    def __init__(self):
        self.servers: list[str | None] = []

    def fetch(self, request, keys, now, deadline, stats, optional=frozenset()):
        self.servers.append(request.fhir_server)
        raise DataUnavailable("no FHIR server in fuzz tests")

    def read(self, request, references, deadline, stats):
        self.servers.append(request.fhir_server)
        return []


@pytest.fixture(scope="module", autouse=True)
def network():
    closed = ClosedNetwork()
    patch = pytest.MonkeyPatch()
    patch.setattr(socket.socket, "connect", lambda *a, **k: closed.refuse(*a))
    patch.setattr(socket.socket, "connect_ex", lambda *a, **k: closed.refuse(*a))
    patch.setattr(socket, "getaddrinfo", lambda *a, **k: closed.refuse(None, *a))
    yield closed
    patch.undo()
    assert closed.attempts == [], f"fuzzing tried the network: {closed.attempts[:5]}"


def _app(settings: Settings):
    # Built at import: schemathesis reads the OpenAPI document from it to generate the tests.
    app = create_app(settings, clock=lambda: ANCHOR)
    app.config["TESTING"] = True
    service_of(app).engine.fetcher = RecordingFetcher()
    return app


def _secured_settings() -> Settings:
    """A production-mode configuration trusting one client whose key only this module holds."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-secured-"))
    jwk = {**ECAlgorithm.to_jwk(CLIENT_KEY.public_key(), as_dict=True), "kid": "fuzz-1"}
    (folder / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (folder / "service.toml").write_text(
        f'instance_dir = "instance"\npublic_base_url = "http://localhost/"\n'
        f'[[clients]]\niss = "{CLIENT_ISS}"\n'
        'jwks_file = "jwks.json"\n')
    return load_settings(folder / "service.toml")


CLIENT_ISS = "https://fuzz-ehr.example.org"
CLIENT_KEY = ec.generate_private_key(ec.SECP384R1())
APP = _app(Settings(instance_dir=Path(tempfile.mkdtemp(prefix="fuzz-instance-"))))
SECURED_APP = _app(_secured_settings())


@pytest.fixture(scope="module")
def fuzz_app():
    return APP


# --- schemathesis: the OpenAPI document drives the requests, against production settings -----

schema = schemathesis.openapi.from_wsgi("/openapi.json", SECURED_APP)


@schema.auth(refresh_interval=None)
class ClientJwt:
    """A fresh signed JWT for each case (jti is single-use), with aud the URL called.
    Cases that deliberately drop Authorization go without and must get 401."""

    def get(self, case, context):
        return CLIENT_ISS

    def set(self, case, data, context):
        now = int(time.time())
        token = jwt.encode({"iss": data, "aud": "http://localhost" + case.formatted_path,
                            "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())},
                           CLIENT_KEY, algorithm="ES384", headers={"kid": "fuzz-1"})
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_schema_driven_input(case):
    response = case.call()
    case.validate_response(response, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance,
        response_schema_conformance, negative_data_rejection, response_headers_conformance,
        missing_required_header, ignored_auth, unsupported_method])
    # Flask answers preflights itself, with no body; /metrics is Prometheus text, /rules HTML.
    pages = {("/metrics", 200), ("/rules", 200), ("/rules", 304)}
    if case.method != "OPTIONS" and (case.path, response.status_code) not in pages:
        assert response.headers["content-type"][0].startswith("application/json")
        json.loads(response.content)  # every answer, error or not, is a JSON body


def test_openapi_document_describes_every_endpoint(fuzz_app):
    document = fuzz_app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/cds-services", "/health", "/ready", "/metrics",
                                      "/rules"} | {
        f"/cds-services/{service_id}" for service_id in SERVICES} | {
        f"/cds-services/{service_id}/feedback" for service_id in SERVICES}
    call = document["paths"]["/cds-services/calciphylaxis-order-sign"]["post"]
    request_schema = call["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema["required"] == ["hook", "hookInstance", "context"]
    assert request_schema["properties"]["hook"]["enum"] == ["order-sign"]
    assert {"400", "401", "412", "413", "415"} <= set(call["responses"])
    assert document["components"]["securitySchemes"]["cdsHooksJwt"]["scheme"] == "bearer"


# --- hypothesis: FHIR-shaped junk --------------------------------------------------------------

JSON_LEAVES = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JUNK = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

# Values a real chart would put in these fields, mixed with junk of every JSON type.
CODE_SYSTEMS = st.sampled_from(["http://www.nlm.nih.gov/research/umls/rxnorm",
                                "http://loinc.org", "http://snomed.info/sct",
                                "http://hl7.org/fhir/sid/icd-10-cm", "urn:oid:2.16.840.1"])
CODES = st.sampled_from(["11289", "855332", "1648", "2731-8", "2777-1", "17861-6", "N18.6",
                         "Z99.2", "236435004", "714036", "197361", "1514", ""])
CODING = st.fixed_dictionaries({}, optional={
    "system": CODE_SYSTEMS | JUNK, "code": CODES | JUNK, "display": st.text(max_size=30)})
CODEABLE = st.fixed_dictionaries({}, optional={
    "coding": st.lists(CODING, max_size=3) | CODING | JUNK, "text": st.text(max_size=30)})
DATES = st.sampled_from(["2026-11-01", "2026-11-20T10:00:00Z", "2026-11-20T10:00:00",
                         "2026", "2026-02-30", "yesterday", "", "2026-11-20T25:61:00+14:00"])
QUANTITY = st.fixed_dictionaries({}, optional={
    "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers() | JUNK,
    "unit": st.sampled_from(["pg/mL", "pmol/L", "mg/dL", "mmol/L", "kg/m2", "%", ""]) | JUNK,
    "system": st.just("http://unitsofmeasure.org"), "code": st.text(max_size=6)})
REFERENCE_TO_PATIENT = st.fixed_dictionaries({}, optional={
    "reference": st.sampled_from(["Patient/ref-1", "Patient/other", "urn:uuid:x", ""]) | JUNK})
FIELD_VALUES = {
    "id": st.text(max_size=12) | JUNK,
    "status": st.sampled_from(["active", "draft", "completed", "final", "stopped",
                               "entered-in-error", "on-hold", "unknown"]) | JUNK,
    "intent": st.sampled_from(["order", "plan", "proposal"]) | JUNK,
    "subject": REFERENCE_TO_PATIENT | JUNK,
    "code": CODEABLE | JUNK,
    "category": st.lists(CODEABLE, max_size=2) | CODEABLE | JUNK,
    "medicationCodeableConcept": CODEABLE | JUNK,
    "medicationReference": st.fixed_dictionaries({"reference": st.text(max_size=20)}) | JUNK,
    "valueQuantity": QUANTITY | JUNK,
    "valueString": st.text(max_size=10) | JUNK,
    "effectiveDateTime": DATES | JUNK,
    "authoredOn": DATES | JUNK,
    "performedDateTime": DATES | JUNK,
    "performedPeriod": st.fixed_dictionaries({}, optional={"start": DATES, "end": DATES}),
    "onsetDateTime": DATES | JUNK,
    "clinicalStatus": CODEABLE | JUNK,
    "dosageInstruction": st.lists(JUNK, max_size=2) | JUNK,
    "extension": st.lists(JUNK, max_size=2) | JUNK,
}
RESOURCE_TYPES = st.sampled_from(["MedicationRequest", "MedicationStatement", "Medication",
                                  "Observation", "Condition", "Procedure", "Patient", "Bundle",
                                  "OperationOutcome", "Encounter", "NotAType"]) | JUNK
RESOURCE = st.builds(lambda resource_type, fields: {"resourceType": resource_type, **fields},
                     RESOURCE_TYPES,
                     st.fixed_dictionaries({}, optional=FIELD_VALUES))
ENTRY = st.fixed_dictionaries({"resource": RESOURCE}) | JUNK
BUNDLE = st.fixed_dictionaries({"resourceType": st.just("Bundle")}, optional={
    "type": st.sampled_from(["searchset", "collection"]) | JUNK,
    "entry": st.lists(ENTRY, max_size=5) | ENTRY | JUNK,
    "link": st.lists(st.fixed_dictionaries({"relation": st.sampled_from(["self", "next"]),
                                            "url": st.text(max_size=10)}), max_size=2)})
PREFETCH_VALUE = BUNDLE | RESOURCE | st.none() | JUNK
PREFETCH_MAP = st.dictionaries(st.sampled_from(list(PREFETCH)) | st.text(max_size=6),
                               PREFETCH_VALUE, max_size=len(PREFETCH) + 1)
# Only loopback or unresolvable hosts, and the fetcher is a stub anyway: nothing is contacted.
FHIR_SERVERS = st.sampled_from(["http://127.0.0.1:9/fhir", "https://fhir.invalid/r4",
                                "http://10.0.0.1/", "ftp://x", "", "http://"]) | JUNK


@st.composite
def hook_bodies(draw, service=None) -> dict:
    """A CDS Hooks request that is right in shape and wrong in any detail."""
    service = service or draw(st.sampled_from(list(SERVICES.values())))
    context = {"userId": draw(st.sampled_from(["Practitioner/1", ""]) | JUNK),
               "patientId": draw(st.sampled_from(["ref-1", "Patient/ref-1", "bad id!"]) | JUNK)}
    if draw(st.booleans()):
        context["draftOrders"] = draw(BUNDLE | JUNK)
    if draw(st.booleans()):
        context["selections"] = draw(st.lists(st.sampled_from(
            ["MedicationRequest/draft-1", "MedicationRequest/x", ""]) | JUNK, max_size=3) | JUNK)
    body = {"hook": draw(st.just(service.hook) | JUNK),
            "hookInstance": draw(st.uuids().map(str) | JUNK),
            "context": context,
            "prefetch": draw(PREFETCH_MAP | JUNK)}
    if draw(st.booleans()):
        body["fhirServer"] = draw(FHIR_SERVERS)
    if draw(st.booleans()):
        body["fhirAuthorization"] = draw(st.fixed_dictionaries({}, optional={
            "access_token": st.text(max_size=10) | JUNK, "token_type": st.just("Bearer") | JUNK,
            "expires_in": st.integers() | JUNK, "scope": JUNK, "subject": JUNK}) | JUNK)
    for key in draw(st.lists(st.sampled_from(["hook", "hookInstance", "context", "prefetch"]),
                             max_size=1)):
        body.pop(key)
    return body


def _valid_order_sign_body(draw_orders: list[dict], prefetch: dict) -> dict:
    body = json.loads(json.dumps(REFERENCE))
    body["hook"] = "order-sign"
    body["context"]["draftOrders"] = {"resourceType": "Bundle",
                                      "entry": [{"resource": r} for r in draw_orders]}
    body["prefetch"].update(prefetch)
    return body


FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(body=hook_bodies())
def test_the_parser_accepts_or_rejects_with_400_and_nothing_else(body):
    for service in SERVICES.values():
        try:
            parsed = parse_request(service, body)
        except ServiceError as exc:
            assert exc.status == 400 and exc.message
        else:
            assert isinstance(parsed, HookRequest)
            assert parsed.hook_instance and parsed.user_id and parsed.patient_id


@FAST
@given(body=hook_bodies())
def test_the_engine_answers_or_raises_a_service_error_for_junk(fuzz_app, body):
    engine = service_of(fuzz_app).engine
    for service in SERVICES.values():
        try:
            response = engine.call(service, body, ANCHOR)
        except ServiceError as exc:
            assert 400 <= exc.status < 500
        else:
            assert isinstance(response["cards"], list)


@FAST
@given(orders=st.lists(RESOURCE, max_size=4), prefetch=st.dictionaries(
    st.sampled_from(list(PREFETCH)), PREFETCH_VALUE, max_size=3))
def test_the_assessment_survives_junk_beside_a_real_chart(fuzz_app, orders, prefetch):
    """The reference chart (a true warning) with junk draft orders and junk prefetch keys."""
    engine = service_of(fuzz_app).engine
    try:
        response = engine.call(ORDER_SIGN, _valid_order_sign_body(orders, prefetch), ANCHOR)
    except ServiceError as exc:
        assert 400 <= exc.status < 500
    else:
        for card in response["cards"]:
            assert card["summary"] and len(card["summary"]) < 140


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(body=hook_bodies() | JUNK)
def test_http_answers_junk_with_json_and_never_5xx(fuzz_app, body):
    client = fuzz_app.test_client()
    for service_id in SERVICES:
        response = client.post(f"/cds-services/{service_id}", json=body)
        assert response.status_code < 500
        assert response.is_json
        payload = response.get_json()
        assert "cards" in payload or payload["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("fhir_server", ["http://127.0.0.1:9/fhir", "http://localhost:1/r4"])
def test_a_call_that_needs_fhir_data_asks_the_stub_and_opens_no_socket(fuzz_app, network,
                                                                      fhir_server):
    """What makes the network check of this module mean something, shown by this test alone
    in any order (it used to only read what earlier tests had left): a call with a prefetch
    key missing asks the stub fetcher, which answers 412, and no socket is opened."""
    fetcher = service_of(fuzz_app).engine.fetcher
    asked, attempted = len(fetcher.servers), len(network.attempts)
    body = json.loads(json.dumps(REFERENCE))
    body["fhirServer"] = fhir_server
    del body["prefetch"]["observations"]
    response = fuzz_app.test_client().post("/cds-services/calciphylaxis-patient-view", json=body)
    assert response.status_code == 412, response.get_data(as_text=True)
    assert fetcher.servers[asked:] == [fhir_server]
    assert network.attempts[attempted:] == []


# --- nesting: deep junk is refused or ignored, never a crash ---------------------------------

def nested(depth: int) -> object:
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"x": value}
    return value


def nested_text(depth: int) -> str:
    """The same structure as JSON text (json.dumps itself would recurse too deep)."""
    opens = "".join("[" if level % 2 else '{"x":' for level in reversed(range(depth)))
    closes = "".join("]" if level % 2 else "}" for level in range(depth))
    return opens + "1" + closes


PLACES = {
    "top-level unknown field": lambda b, v: b.update(someFutureField=v),
    "context extension": lambda b, v: b["context"].update(extension=v),
    "prefetch unknown key": lambda b, v: b["prefetch"].update(somethingElse=v),
    "inside a prefetched observation": lambda b, v: b["prefetch"]["observations"]["entry"][0][
        "resource"].update(extension=v),
    "inside a draft order": lambda b, v: b["context"]["draftOrders"]["entry"][0][
        "resource"].update(extension=v),
}


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH - 8, MAX_JSON_DEPTH + 8, 1000])
def test_deep_nesting_anywhere_is_never_a_crash(fuzz_app, place, depth):
    body = _valid_order_sign_body([{"resourceType": "MedicationRequest", "id": "draft-1",
                                    "status": "draft", "intent": "order",
                                    "subject": {"reference": "Patient/ref-1"},
                                    "medicationCodeableConcept": {"text": "warfarin"}}], {})
    PLACES[place](body, "@DEEP@")
    text = json.dumps(body).replace('"@DEEP@"', nested_text(depth))
    PLACES[place](body, nested(depth))
    engine = service_of(fuzz_app).engine
    try:  # called directly: an exception here is a bug the HTTP layer would hide
        engine.call(ORDER_SIGN, body, ANCHOR)
    except ServiceError as exc:
        assert exc.status < 500
    response = fuzz_app.test_client().post("/cds-services/calciphylaxis-order-sign",
                                           data=text, content_type="application/json")
    assert response.status_code < 500 and response.is_json


# --- what the fuzzing found ---------------------------------------------------------------------

@pytest.mark.parametrize("fhir_server", [
    "http://[::1",  # urlsplit raised ValueError: the whole call was lost to the catch-all
    "http://fhir.example.org:99999/r4", "http://fhir.example.org:port/r4",
    "https://\u00fb\u00f4o*\x0f\u00a9h", "http://fhir example.org/", "http://", "HTTPS//x",
])
def test_a_malformed_fhir_server_is_a_400(fhir_server):
    body = json.loads(json.dumps(REFERENCE))
    body["fhirServer"] = fhir_server
    with pytest.raises(ServiceError) as refused:
        parse_request(PATIENT_VIEW, body)
    assert refused.value.status == 400 and "fhirServer" in refused.value.message


@pytest.mark.parametrize("junk_type", [["Condition"], {"x": 1}])
def test_a_junk_resource_type_in_a_bundle_loses_only_that_entry(fuzz_app, junk_type):
    engine = service_of(fuzz_app).engine
    body = json.loads(json.dumps(REFERENCE))
    assert engine.call(PATIENT_VIEW, body, ANCHOR)["cards"]  # the warning, without junk
    body["prefetch"]["conditions"]["entry"].append({"resource": {"resourceType": junk_type}})
    assert engine.call(PATIENT_VIEW, body, ANCHOR)["cards"]
