"""POST /cds-services/{id}/feedback (CDS Hooks F1): strict validation, whole batches, duplicates
stored once; and the hook call unharmed when the store is down. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import time
from datetime import timedelta, timezone

import pytest
import sqlalchemy as sa
from conftest import ANCHOR, FIXTURES

from cds_service.bootstrap import create_app, service_of
from cds_service.ops.config import Settings
from cds_service.store.schema import card_feedback, issued_card

ORDER_SIGN = "calciphylaxis-order-sign"
PATIENT_VIEW = "calciphylaxis-patient-view"
REASON = {"system": "urn:calciphylaxis-cds:override-reason", "code": "benefit-outweighs-risk",
          "display": "Benefit outweighs calciphylaxis risk"}


def instant(minutes_before_now: float = 1) -> str:
    return (ANCHOR - timedelta(minutes=minutes_before_now)).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def feedback_app(request, tmp_path_factory):
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(request.getfixturevalue("postgres").database())
        # Validation is tested here, not deadlines: no 503 from a slow test machine.
        app = create_app(Settings(instance_dir=tmp_path_factory.mktemp("instance"),
                                  database_url=url, feedback_store_timeout_seconds=5.0),
                         clock=lambda: ANCHOR)
        yield app
        service_of(app).feedback.recorder.close()
        service_of(app).feedback.store.dispose()


@pytest.fixture()
def client(feedback_app):
    return feedback_app.test_client()


@pytest.fixture()
def store(feedback_app):
    return service_of(feedback_app).feedback.store


def show_card(client, name: str = "reference-order-sign", *, recorded: bool = True) -> dict:
    """Call the hook for real and return the one card it shows; `recorded`: wait until its
    record is in the store (as it is within a second), so feedback is checked against it at
    once rather than when the record comes."""
    request = json.loads((FIXTURES / "requests" / f"{name}.json").read_text())
    response = client.post(f"/cds-services/calciphylaxis-{request['hook']}",
                           json=request)
    assert response.status_code == 200
    [card] = response.get_json()["cards"]
    if recorded:
        assert service_of(client.application).feedback.recorder.flush(10)
    return card


def accepted(card: dict, minutes_before_now: float = 1, suggestion: int = 0) -> dict:
    return {"card": card["uuid"], "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][suggestion]["uuid"]}],
            "outcomeTimestamp": instant(minutes_before_now)}


def overridden(card: dict, minutes_before_now: float = 1, **reason) -> dict:
    return {"card": card["uuid"], "outcome": "overridden",
            "overrideReason": reason or {"reason": REASON}, "outcomeTimestamp":
            instant(minutes_before_now)}


def post(client, entries, service: str = ORDER_SIGN):
    return client.post(f"/cds-services/{service}/feedback", json={"feedback": entries})


def feedback_on(store, card: dict) -> list:
    with store.read() as connection:
        return connection.execute(sa.select(card_feedback).where(
            card_feedback.c.card_uuid == card["uuid"]).order_by(card_feedback.c.outcome_at)).all()


def issues(response) -> list[dict]:
    body = response.get_json()
    assert response.status_code == 400, body
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"]


def expressions(response) -> list[str]:
    return [e for issue in issues(response) for e in issue["expression"]]


# -- accepted and overridden ------------------------------------------------------------------
def test_accepting_a_suggestion_of_a_card_just_shown_is_stored(client, store):
    card = show_card(client, recorded=False)  # no wait: the card's record may still be queued
    response = post(client, [accepted(card, suggestion=1)])
    assert response.status_code == 200, response.get_json()
    # Accepted at once; moved in with the record, which comes within a second.
    assert service_of(client.application).feedback.recorder.flush(10)
    assert response.get_json() == {"stored": 1, "duplicates": 0}
    [row] = feedback_on(store, card)
    assert row.outcome == "accepted"
    assert row.accepted_suggestions == [card["suggestions"][1]["uuid"]]
    assert row.outcome_at == ANCHOR - timedelta(minutes=1)
    assert row.service_id == ORDER_SIGN


def test_override_with_a_reason_and_a_comment_is_stored(client, store):
    card = show_card(client)
    response = post(client, [overridden(card, reason=REASON, userComment="nephrology agrees")])
    assert response.status_code == 200
    [row] = feedback_on(store, card)
    assert (row.outcome, row.reason_system, row.reason_code, row.reason_display,
            row.user_comment) == ("overridden", REASON["system"], REASON["code"],
                                  REASON["display"], "nephrology agrees")


def test_override_with_only_a_comment_or_only_a_reason_code_is_stored(client, store):
    card = show_card(client)
    reason = {"system": "http://example.org/ehr-reasons", "code": "other"}  # client's own code
    response = post(client, [overridden(card, 2, userComment="patient declined"),
                             overridden(card, 1, reason=reason)])
    assert response.status_code == 200
    assert [r.reason_code for r in feedback_on(store, card)] == [None, "other"]


def test_a_patient_view_card_without_suggestions_can_be_accepted_with_an_empty_list(client):
    card = show_card(client, "warfarin-alone-says-doac")
    assert "suggestions" not in card
    response = post(client, [{"card": card["uuid"], "outcome": "accepted",
                              "acceptedSuggestions": [], "outcomeTimestamp": instant()}],
                    PATIENT_VIEW)
    assert response.status_code == 200


def test_timestamp_with_an_offset_is_stored_as_the_same_utc_instant(client, store):
    card = show_card(client)
    entry = accepted(card)
    entry["outcomeTimestamp"] = (ANCHOR - timedelta(hours=1)).astimezone(
        timezone(timedelta(hours=2))).isoformat()  # 2026-11-20T13:00:00+02:00
    assert post(client, [entry]).status_code == 200
    assert feedback_on(store, card)[0].outcome_at == ANCHOR - timedelta(hours=1)


def test_unknown_fields_extensions_and_urn_uuid_form_are_tolerated(client, store):
    card = show_card(client)
    entry = accepted(card) | {"extension": {"org.example.x": 1}, "somethingNew": True}
    entry["card"] = f"urn:uuid:{card['uuid']}"
    response = client.post(f"/cds-services/{ORDER_SIGN}/feedback",
                           json={"feedback": [entry], "extension": {"a": "b"}})
    assert response.status_code == 200
    assert len(feedback_on(store, card)) == 1


# -- duplicates -------------------------------------------------------------------------------
def test_the_same_report_sent_twice_is_stored_once(client, store):
    card = show_card(client)
    entry = overridden(card, userComment="seen")
    assert post(client, [entry]).get_json() == {"stored": 1, "duplicates": 0}
    assert post(client, [entry]).get_json() == {"stored": 0, "duplicates": 1}
    assert len(feedback_on(store, card)) == 1


def test_the_same_report_twice_in_one_batch_is_stored_once(client, store):
    card = show_card(client)
    entry = accepted(card)
    assert post(client, [entry, dict(entry)]).get_json() == {"stored": 1, "duplicates": 1}
    assert len(feedback_on(store, card)) == 1


def test_the_same_instant_written_differently_is_the_same_report(client, store):
    card = show_card(client)
    first, second = accepted(card, 3), accepted(card, 3)
    second["outcomeTimestamp"] = second["outcomeTimestamp"].replace("Z", ".000+00:00")
    post(client, [first])
    assert post(client, [second]).get_json()["duplicates"] == 1
    assert len(feedback_on(store, card)) == 1


def test_different_outcomes_times_or_reasons_of_one_card_are_all_kept(client, store):
    card = show_card(client)
    response = post(client, [overridden(card, 5), accepted(card, 3),
                             overridden(card, 3, userComment="changed my mind")])
    assert response.get_json() == {"stored": 3, "duplicates": 0}


# -- validation: which entry is bad, and nothing stored ---------------------------------------
def test_a_batch_with_one_bad_entry_stores_nothing_and_says_which_entry(client, store):
    cards = [show_card(client) for _ in range(3)]
    entries = [accepted(cards[0]), overridden(cards[1]), accepted(cards[2])]
    entries[1]["outcome"] = "dismissed"
    before = store.count(card_feedback)
    response = post(client, entries)
    assert expressions(response) == ["feedback[1].outcome"]
    assert "feedback[1]" in issues(response)[0]["diagnostics"]
    assert store.count(card_feedback) == before


def test_a_batch_whose_last_entry_names_a_foreign_suggestion_stores_nothing(client, store):
    """Checked against the cards inside the storing transaction: all or nothing."""
    cards = [show_card(client) for _ in range(3)]
    entries = [accepted(cards[0]), overridden(cards[1]), accepted(cards[2])]
    entries[2]["acceptedSuggestions"] = [{"id": cards[0]["suggestions"][0]["uuid"]}]
    before = store.count(card_feedback)
    response = post(client, entries)
    assert expressions(response) == ["feedback[2].acceptedSuggestions[0].id"]
    assert "is not a suggestion of card" in issues(response)[0]["diagnostics"]
    assert store.count(card_feedback) == before


def test_every_bad_entry_is_named(client):
    card = show_card(client)
    entries = [{"card": card["uuid"]}, accepted(card), "not an object"]
    assert expressions(post(client, entries)) == [
        "feedback[0].outcome", "feedback[0].outcomeTimestamp", "feedback[2]"]


def test_unknown_card_is_400(client):
    response = post(client, [overridden({"uuid": "3f1c8d2e-0000-4000-8000-000000000000"})])
    assert expressions(response) == ["feedback[0].card"]
    assert "not a card this service issued" in issues(response)[0]["diagnostics"]


def test_a_card_of_another_service_is_400(client):
    card = show_card(client, "reference-patient-view")
    response = post(client, [overridden(card)], ORDER_SIGN)
    assert expressions(response) == ["feedback[0].card"]
    assert PATIENT_VIEW in issues(response)[0]["diagnostics"]


def test_accepted_without_accepted_suggestions_is_400(client):
    card = show_card(client)
    entry = accepted(card)
    del entry["acceptedSuggestions"]
    response = post(client, [entry])
    assert expressions(response) == ["feedback[0].acceptedSuggestions"]
    assert "required" in issues(response)[0]["diagnostics"]


def test_accepted_with_an_empty_list_on_a_card_with_suggestions_is_400(client):
    card = show_card(client)
    response = post(client, [accepted(card) | {"acceptedSuggestions": []}])
    assert expressions(response) == ["feedback[0].acceptedSuggestions"]


def test_a_suggestion_id_not_of_that_card_is_400(client):
    card, other = show_card(client), show_card(client)
    response = post(client, [accepted(card) | {
        "acceptedSuggestions": [{"id": other["suggestions"][0]["uuid"]}]}])
    assert expressions(response) == ["feedback[0].acceptedSuggestions[0].id"]


def test_two_suggestions_of_an_at_most_one_card_is_400(client):
    card = show_card(client)
    assert card["selectionBehavior"] == "at-most-one"
    entry = accepted(card) | {"acceptedSuggestions": [{"id": s["uuid"]}
                                                      for s in card["suggestions"]]}
    assert expressions(post(client, [entry])) == ["feedback[0].acceptedSuggestions"]


@pytest.mark.parametrize("change, where", [
    ({"outcome": None}, "feedback[0].outcome"),
    ({"outcome": "ACCEPTED"}, "feedback[0].outcome"),
    ({"card": ""}, "feedback[0].card"),
    ({"card": 42}, "feedback[0].card"),
    ({"outcomeTimestamp": None}, "feedback[0].outcomeTimestamp"),
    ({"outcomeTimestamp": "2026-11-20T11:00:00"}, "feedback[0].outcomeTimestamp"),  # no zone
    ({"outcomeTimestamp": "2026-11-20"}, "feedback[0].outcomeTimestamp"),
    ({"outcomeTimestamp": "2026-02-30T11:00:00Z"}, "feedback[0].outcomeTimestamp"),
    ({"outcomeTimestamp": 1763640000}, "feedback[0].outcomeTimestamp"),
    ({"outcomeTimestamp": "2026-11-20T13:00:00Z"}, "feedback[0].outcomeTimestamp"),  # future
    ({"acceptedSuggestions": {"id": "x"}}, "feedback[0].acceptedSuggestions"),
    ({"acceptedSuggestions": [{}]}, "feedback[0].acceptedSuggestions[0].id"),
    ({"acceptedSuggestions": ["x"]}, "feedback[0].acceptedSuggestions[0]"),
    ({"overrideReason": {"reason": REASON}}, "feedback[0].overrideReason"),  # on accepted
])
def test_malformed_accepted_entry_is_400_naming_the_field(client, change, where):
    card = show_card(client)
    entry = {k: v for k, v in (accepted(card) | change).items() if v is not None}
    assert expressions(post(client, [entry])) == [where]


@pytest.mark.parametrize("reason, where", [
    ({}, "feedback[0].overrideReason"),
    ("too risky", "feedback[0].overrideReason"),
    ({"reason": "benefit"}, "feedback[0].overrideReason.reason"),
    ({"reason": {"system": REASON["system"]}}, "feedback[0].overrideReason.reason.code"),
    ({"reason": {"code": "x"}}, "feedback[0].overrideReason.reason.system"),
    ({"reason": REASON | {"display": 3}}, "feedback[0].overrideReason.reason.display"),
    ({"userComment": ""}, "feedback[0].overrideReason.userComment"),
    ({"userComment": "x" * 4001}, "feedback[0].overrideReason.userComment"),
])
def test_malformed_override_reason_is_400_naming_the_field(client, reason, where):
    card = show_card(client)
    entry = overridden(card) | {"overrideReason": reason}
    assert expressions(post(client, [entry])) == [where]


def test_overridden_with_accepted_suggestions_is_400(client):
    card = show_card(client)
    entry = overridden(card) | {"acceptedSuggestions": accepted(card)["acceptedSuggestions"]}
    assert expressions(post(client, [entry])) == ["feedback[0].acceptedSuggestions"]


@pytest.mark.parametrize("body", [[], {}, {"feedback": {}}, {"feedback": []},
                                  {"feedback": [{}] * 1001}])
def test_a_body_without_a_feedback_array_is_400(client, body):
    response = client.post(f"/cds-services/{ORDER_SIGN}/feedback", json=body)
    assert response.status_code == 400
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_not_json_is_415_and_broken_json_is_400(client):
    url = f"/cds-services/{ORDER_SIGN}/feedback"
    assert client.post(url, data="feedback", content_type="text/plain").status_code == 415
    assert client.post(url, data="{", content_type="application/json").status_code == 400


def test_unknown_service_is_404(client):
    response = post(client, [overridden({"uuid": "x"})], "no-such-service")
    assert response.status_code == 404
    assert response.get_json()["issue"][0]["code"] == "not-found"


# -- the store down ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_without_store(tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    started = time.perf_counter()
    app = create_app(Settings(instance_dir=tmp_path_factory.mktemp("instance"),
                              database_url=f"postgresql://cds@127.0.0.1:{closed}/cds"),
                     clock=lambda: ANCHOR)
    app.config["start_seconds"] = time.perf_counter() - started
    yield app
    service_of(app).feedback.recorder.close(timeout=0.1)


def test_with_the_store_down_the_service_starts_and_hook_calls_return_their_cards_quickly(
        app_without_store, client):
    assert app_without_store.config["start_seconds"] < 5
    down = app_without_store.test_client()
    request = json.loads((FIXTURES / "requests" / "reference-order-sign.json").read_text())
    url = f"/cds-services/{ORDER_SIGN}"
    for target in (client, down):  # warm both
        target.post(url, json=request)
    timings = {}
    for name, target in (("up", client), ("down", down)):
        started = time.perf_counter()
        for _ in range(10):
            response = target.post(url, json=request)
            assert response.status_code == 200
            assert len(response.get_json()["cards"]) == 1
        timings[name] = (time.perf_counter() - started) / 10
    assert timings["down"] < 0.5
    assert timings["down"] < timings["up"] * 2 + 0.02, timings


def test_with_the_store_down_feedback_is_503(app_without_store):
    response = post(app_without_store.test_client(), [overridden({"uuid": "x"})])
    assert response.status_code == 503
    assert response.get_json()["issue"][0]["code"] == "transient"


def test_every_card_shown_is_recorded(client, store):
    card = show_card(client)
    service_of(client.application).feedback.recorder.flush(10)
    with store.read() as connection:
        row = connection.execute(sa.select(issued_card).where(
            issued_card.c.card_uuid == card["uuid"])).one()
    assert row.issued_at == ANCHOR
    assert row.service_id == ORDER_SIGN


def test_feedback_calls_are_logged_like_hook_calls(client, caplog):
    """Counts, service and status; never the card, the patient or the reason."""
    card = show_card(client)
    caplog.set_level(logging.INFO, logger="cds_service")
    assert post(client, [overridden(card), overridden(card)]).status_code == 200
    assert post(client, [{"card": card["uuid"]}]).status_code == 400
    assert client.post("/cds-services/nope/feedback", json={"feedback": []}).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feedback ")]
    assert re.fullmatch(r"feedback calciphylaxis-order-sign status=200 entries=2 stored=1 "
                        r"duplicates=1 ms=[\d.]+", lines[0]), lines
    assert lines[1].startswith("feedback calciphylaxis-order-sign status=400 entries=0 ")
    assert lines[2].startswith("feedback unknown-service status=404 ")
    logged = " ".join(lines)
    assert card["uuid"] not in logged and "benefit" not in logged.lower()
