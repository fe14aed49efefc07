"""CDS Hooks 2.0 protocol over HTTP: discovery (D1), service calls (Q1), response shape (G2), CORS.

Rule ids refer to docs/cds-hooks.md. The response-shape checks run over every 200 fixture of
fixtures/manifest.json; `check_cds_response` is shared with test_cli.py.
"""

from __future__ import annotations

import copy
import re
import uuid

import pytest
from conftest import MANIFEST, load_request
from fhir.resources.R4B.medicationrequest import MedicationRequest

SERVICE_OF_HOOK = {
    "patient-view": "calciphylaxis-patient-view",
    "order-select": "calciphylaxis-order-select",
    "order-sign": "calciphylaxis-order-sign",
}
OK_CASES = [c for c in MANIFEST["cases"] if c["expect"]["status"] == 200]
OK_IDS = [c["name"] for c in OK_CASES]
ALLOWED_TOKENS = {"context.patientId", "context.userId", "context.encounterId"}
ORIGIN = "https://sandbox.cds-hooks.org"


def _case(name: str) -> dict:
    return next(c for c in MANIFEST["cases"] if c["name"] == name)


def _url(request: dict) -> str:
    return f"/cds-services/{SERVICE_OF_HOOK[request['hook']]}"


# -- shape checkers (shared with test_cli.py) ---------------------------------------------------
def empty_paths(value: object, path: str = "$") -> list[str]:
    """JSON paths of every null, "", [] or {} in value (G2), its own path included."""
    found = []
    if value is None or (isinstance(value, str | list | dict) and len(value) == 0):
        found.append(path)
    if isinstance(value, dict):
        for key, item in value.items():
            found += empty_paths(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += empty_paths(item, f"{path}[{index}]")
    return found


def g2_violations(body: dict) -> list[str]:
    """G2: no null or empty attribute anywhere, except the top-level `cards: []`."""
    return [p for p in empty_paths(body) if p != "$.cards"]


def _suggestions(cards: list[dict]) -> list[dict]:
    return [s for card in cards for s in card.get("suggestions", [])]


def _actions(cards: list[dict]) -> list[dict]:
    return [a for s in _suggestions(cards) for a in s["actions"]]


def _patient_id(request: dict) -> str:
    return request["context"]["patientId"].removeprefix("Patient/")


def _draft_refs(request: dict) -> set[str]:
    bundle = request["context"].get("draftOrders") or {}
    entries = bundle.get("entry", [])
    entries = [entries] if isinstance(entries, dict) else entries
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in entries if isinstance(e.get("resource"), dict) and "id" in e["resource"]}


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def check_g2(body, request):
    assert g2_violations(body) == []


def check_summaries(body, request):
    for card in body["cards"]:
        assert isinstance(card["summary"], str) and len(card["summary"]) < 140, card["summary"]


def check_indicators(body, request):
    for card in body["cards"]:
        assert card["indicator"] in {"info", "warning", "critical"}


def check_card_identity(body, request):
    uuids = [card.get("uuid") for card in body["cards"]]
    assert all(_is_uuid(u) for u in uuids), uuids
    assert len(set(uuids)) == len(uuids)
    for card in body["cards"]:
        assert isinstance(card["source"]["label"], str) and card["source"]["label"].strip()


def check_suggestions(body, request):
    suggestions = _suggestions(body["cards"])
    for suggestion in suggestions:
        assert _is_uuid(suggestion.get("uuid")), suggestion
        assert isinstance(suggestion.get("label"), str) and suggestion["label"].strip()
        assert isinstance(suggestion.get("actions"), list) and suggestion["actions"]
    assert len({s["uuid"] for s in suggestions}) == len(suggestions)
    for card in body["cards"]:
        if "suggestions" in card:
            assert card.get("selectionBehavior") in {"at-most-one", "any"}


def check_override_reasons(body, request):
    for card in body["cards"]:
        for reason in card.get("overrideReasons", []):
            assert {"system", "code", "display"} <= reason.keys(), reason
            assert all(isinstance(reason[k], str) and reason[k]
                       for k in ("system", "code", "display"))


def check_links(body, request):
    for card in body["cards"]:
        for link in card.get("links", []):
            assert isinstance(link.get("label"), str) and link["label"]
            assert link.get("type") == "absolute", link
            assert re.match(r"^https?://[^/\s]+", link.get("url", "")), link
            assert "appContext" not in link


def _current_orders(request: dict) -> set[str]:
    own = f"Patient/{_patient_id(request)}"
    medications = (request.get("prefetch") or {}).get("medications") or {}
    return {f"MedicationRequest/{e['resource']['id']}" for e in medications.get("entry", ())
            if e["resource"]["resourceType"] == "MedicationRequest"
            and e["resource"].get("status") in ("active", "on-hold")
            and e["resource"].get("subject", {}).get("reference") == own}


def check_actions(body, request):
    drafts = _draft_refs(request)
    for action in _actions(body["cards"]):
        assert action["type"] in {"create", "update", "delete"}
        assert isinstance(action.get("description"), str) and action["description"]
        if action["type"] == "delete":
            # A draft being ordered, or (patient-view) the patient's own current order.
            assert re.fullmatch(r"MedicationRequest/[A-Za-z0-9\-.]{1,64}", action["resourceId"])
            assert action["resourceId"] in drafts | _current_orders(request), (
                action["resourceId"], drafts)
        if action["type"] == "create":
            resource = action["resource"]
            assert resource["resourceType"] == "MedicationRequest"
            assert resource["status"] == "draft"
            assert resource["subject"]["reference"] == f"Patient/{_patient_id(request)}"
            MedicationRequest.model_validate(resource)


RULES = [check_g2, check_summaries, check_indicators, check_card_identity, check_suggestions,
         check_override_reasons, check_links, check_actions]


def check_cds_response(body: dict, request: dict) -> None:
    """Every response-shape rule of docs/cds-hooks.md 'Response'."""
    assert isinstance(body, dict) and isinstance(body.get("cards"), list)
    for rule in RULES:
        rule(body, request)


@pytest.fixture(scope="module")
def answers(app):
    """The request and HTTP response of every 200 fixture, posted once."""
    client = app.test_client()
    found = {}
    for case in OK_CASES:
        request = load_request(case)
        response = client.post(_url(request), json=request)
        found[case["name"]] = (request, response)
    return found


# -- the G2 checker itself --------------------------------------------------------------------
def test_g2_checker_reports_every_null_and_empty_value():
    body = {"cards": [{"a": None, "b": "", "c": [], "d": {}, "e": [{"f": None}], "g": 0}]}
    assert g2_violations(body) == ["$.cards[0].a", "$.cards[0].b", "$.cards[0].c",
                                   "$.cards[0].d", "$.cards[0].e[0].f"]
    assert g2_violations({"cards": []}) == []


# -- D1 discovery -----------------------------------------------------------------------------
def test_discovery_lists_the_three_services_by_id_and_hook(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    services = response.get_json()["services"]
    assert {(s["id"], s["hook"]) for s in services} == {
        ("calciphylaxis-patient-view", "patient-view"),
        ("calciphylaxis-order-select", "order-select"),
        ("calciphylaxis-order-sign", "order-sign"),
    }


def test_every_discovered_service_has_a_title_and_description(client):
    for service in client.get("/cds-services").get_json()["services"]:
        assert isinstance(service["title"], str) and service["title"].strip()
        assert isinstance(service["description"], str) and service["description"].strip()


def test_discovery_has_no_null_or_empty_attribute(client):
    assert empty_paths(client.get("/cds-services").get_json()) == []


def test_every_prefetch_template_is_scoped_by_context_patient_id(client):
    for service in client.get("/cds-services").get_json()["services"]:
        assert service["prefetch"], service["id"]
        for key, template in service["prefetch"].items():
            assert "{{context.patientId}}" in template, (service["id"], key)
            assert set(re.findall(r"\{\{\s*([^}]*?)\s*\}\}", template)) <= ALLOWED_TOKENS


def test_every_prefetch_template_is_shorter_than_200_characters(client):
    for service in client.get("/cds-services").get_json()["services"]:
        for key, template in service["prefetch"].items():
            assert len(template) < 200, (service["id"], key, len(template))


# -- response shape over every fixture --------------------------------------------------------
@pytest.mark.parametrize("name", OK_IDS)
def test_service_call_answers_200_with_a_cards_array(answers, name):
    _request, response = answers[name]
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert isinstance(response.get_json()["cards"], list)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", OK_IDS)
def test_every_answer_follows_each_response_rule(answers, name, rule):
    """Each rule of check_cds_response on each fixture's answer, reported one by one: no null
    or empty attribute, summaries under 140 characters, indicators, uuids and sources,
    suggestions, override reasons, links, and actions on the patient's own drafts."""
    request, response = answers[name]
    rule(response.get_json(), request)


def test_fixtures_exercise_suggestions_links_and_override_reasons(answers):
    """Guard: the per-fixture checks above must have something to check."""
    cards = [c for _req, resp in answers.values() for c in resp.get_json()["cards"]]
    actions = _actions(cards)
    assert {"delete", "create"} <= {a["type"] for a in actions}
    assert any(c.get("links") for c in cards)
    assert any(c.get("overrideReasons") for c in cards)
    assert {c["indicator"] for c in cards} == {"info", "warning", "critical"}


def test_order_sign_suggests_replacing_the_draft_with_a_delete_and_a_create(answers):
    request, response = answers["reference-order-sign"]
    [card] = response.get_json()["cards"]
    assert card["suggestions"]
    for suggestion in card["suggestions"]:
        # Create first: the Sandbox applies only a suggestion's first action.
        assert [a["type"] for a in suggestion["actions"]] == ["create", "delete"]
        assert suggestion["actions"][1]["resourceId"] in _draft_refs(request)
    assert [s["isRecommended"] for s in card["suggestions"]] == [True, False]


def test_two_calls_give_cards_different_uuids(client):
    request = load_request(_case("reference-order-sign"))
    first = client.post(_url(request), json=request).get_json()["cards"]
    second = client.post(_url(request), json=request).get_json()["cards"]
    assert first and second
    assert not {c["uuid"] for c in first} & {c["uuid"] for c in second}
    assert not {s["uuid"] for s in _suggestions(first)} & {s["uuid"] for s in _suggestions(second)}


# -- Q1: unknown fields and extensions are ignored -----------------------------------------------
def _comparable(cards: list[dict]) -> list[tuple]:
    return [(c["summary"], c["indicator"], c["detail"],
             tuple(s["label"] for s in c.get("suggestions", []))) for c in cards]


@pytest.mark.parametrize("name", ["reference-patient-view", "reference-order-sign"])
def test_unknown_top_level_fields_and_extension_are_ignored(client, name):
    request = load_request(_case(name))
    plain = client.post(_url(request), json=request).get_json()["cards"]
    extended = copy.deepcopy(request)
    extended["extension"] = {"com.example.tenant": {"site": "north", "flags": [1, 2]}}
    extended["someFutureField"] = {"nested": True}
    extended["anotherOne"] = 42
    response = client.post(_url(request), json=extended)
    assert response.status_code == 200
    assert plain
    assert _comparable(response.get_json()["cards"]) == _comparable(plain)


def test_unknown_context_fields_are_ignored(client):
    request = load_request(_case("reference-patient-view"))
    plain = client.post(_url(request), json=request).get_json()["cards"]
    extended = copy.deepcopy(request)
    extended["context"]["extension"] = {"com.example": {"x": 1}}
    extended["context"]["vendorFlag"] = "yes"
    response = client.post(_url(request), json=extended)
    assert response.status_code == 200
    assert _comparable(response.get_json()["cards"]) == _comparable(plain)


# -- CORS ---------------------------------------------------------------------------------------
def test_cors_preflight_allows_post_with_authorization_header(client):
    response = client.options("/cds-services/calciphylaxis-patient-view", headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    })
    assert response.status_code in (200, 204)
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")
    methods = {m.strip().upper()
               for m in response.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "POST" in methods
    headers = {h.strip().lower()
               for h in response.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"authorization", "content-type"} <= headers


def test_discovery_with_an_origin_carries_allow_origin(client):
    response = client.get("/cds-services", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")


def test_service_call_with_an_origin_carries_allow_origin(client):
    request = load_request(_case("reference-patient-view"))
    response = client.post(_url(request), json=request, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") in (ORIGIN, "*")


# -- order-select judges only the selections ----------------------------------------------------
def _draft_naming(request: dict, words: str) -> str:
    for entry in request["context"]["draftOrders"]["entry"]:
        resource = entry["resource"]
        if words in resource["medicationCodeableConcept"]["text"].lower():
            return f"MedicationRequest/{resource['id']}"
    raise AssertionError(f"no draft order naming {words}")


def test_order_select_card_is_about_the_selected_calcitriol_draft(client):
    request = load_request(_case("reference-order-select"))
    calcitriol = _draft_naming(request, "calcitriol")
    assert request["context"]["selections"] == [calcitriol]
    [card] = client.post(_url(request), json=request).get_json()["cards"]
    first_line = card["detail"].split("\n")[0].lower()
    assert "calcitriol" in first_line and "calcium acetate" not in first_line
    # A calcimimetic is added beside active vitamin D, never in place of it (KDIGO 2017 4.2.4).
    assert not [a for a in _actions([card]) if a["type"] == "delete"]
    assert "cinacalcet" in card["suggestions"][0]["label"].lower()


def test_order_select_judges_only_the_selection_not_the_other_drafts(client):
    request = load_request(_case("reference-order-select"))
    calcium_acetate = _draft_naming(request, "calcium acetate")
    request["context"]["selections"] = [calcium_acetate]
    response = client.post(_url(request), json=request)
    assert response.status_code == 200
    [card] = response.get_json()["cards"]
    assert "calcium acetate" in card["summary"].lower()
    first_line = card["detail"].split("\n")[0].lower()
    assert "calcium acetate" in first_line and "calcitriol" not in first_line
    deletes = {a["resourceId"] for a in _actions([card]) if a["type"] == "delete"}
    assert deletes == {calcium_acetate}
    check_cds_response(response.get_json(), request)


def test_order_select_with_a_non_risk_selection_gives_no_card(client):
    request = load_request(_case("reference-order-select"))
    request["context"]["selections"] = [_draft_naming(request, "sevelamer")]
    response = client.post(_url(request), json=request)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_every_card_links_its_rules_page_by_an_absolute_url(client):
    """Issue 14: the card's source had no URL, so the Sandbox showed a link going nowhere."""
    body = load_request(_case("order-sign-multiple-drafts"))
    cards = client.post("/cds-services/calciphylaxis-order-sign", json=body).get_json()["cards"]
    assert cards
    for card in cards:
        url = card["source"]["url"]
        assert url.startswith("http://localhost/rules#"), url
        assert {"label": card["links"][-1]["label"], "url": url, "type": "absolute"} \
            == card["links"][-1]
