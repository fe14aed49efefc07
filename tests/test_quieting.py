"""Override quieting (issue 14): a patient-view card the clinician overrode is not shown again
for override_quiet_days while nothing new appears; critical cards always show; order cards say
when the risk was last acknowledged. Through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import ANCHOR, FIXTURES

from cds_service.bootstrap import create_app, service_of
from cds_service.cdshooks.acknowledgements import PatientAcknowledgements
from cds_service.feedback.quieting import OverrideRecall
from cds_service.feedback.report import build_report
from cds_service.ops.config import Settings
from cds_service.store.schema import issued_card, quieted_card
from cds_service.store.store import FeedbackStore

PATIENT_VIEW = "calciphylaxis-patient-view"
REASONS = "urn:calciphylaxis-cds:override-reason"


def request(name: str) -> dict:
    return json.loads((FIXTURES / "requests" / f"{name}.json").read_text())


class Clock:
    def __init__(self):
        self.now = ANCHOR

    def __call__(self):
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """Settings for one deployment: its database and the pseudonym key all replicas share."""
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(request.getfixturevalue("postgres").database())
        yield Settings(instance_dir=tmp_path / "instance", database_url=url,
                       record_hash_key=b"0123456789abcdef-shared-by-replicas",
                       feedback_store_timeout_seconds=5.0,
                       override_store_timeout_seconds=5.0)


@contextlib.contextmanager
def replica(settings: Settings, clock: Clock):
    app = create_app(settings, clock=clock)
    try:
        yield app.test_client()
    finally:
        service_of(app).feedback.recorder.close()
        service_of(app).feedback.store.dispose()


def call(client, body: dict) -> list[dict]:
    response = client.post(f"/cds-services/calciphylaxis-{body['hook']}", json=body)
    assert response.status_code == 200, response.get_json()
    assert service_of(client.application).feedback.recorder.flush(10)
    return response.get_json()["cards"]


def override(client, card: dict, clock: Clock, service: str = PATIENT_VIEW,
             reason: dict | None = None) -> None:
    reason = reason or {"system": REASONS, "code": "benefit-outweighs-risk"}
    response = client.post(f"/cds-services/{service}/feedback", json={"feedback": [{
        "card": card["uuid"], "outcome": "overridden", "overrideReason": {"reason": reason},
        "outcomeTimestamp": clock.now.isoformat()}]})
    assert response.status_code == 200, response.get_json()


def with_pth(body: dict, value: float) -> dict:
    changed = copy.deepcopy(body)
    for entry in changed["prefetch"]["observations"]["entry"]:
        if entry["resource"]["code"]["coding"][0]["code"] == "2731-8":
            entry["resource"]["valueQuantity"]["value"] = value
    return changed


def with_medication(body: dict, rxnorm: str, display: str, status: str = "active") -> dict:
    changed = copy.deepcopy(body)
    changed["prefetch"]["medications"]["entry"].append({"resource": {
        "resourceType": "MedicationRequest", "id": f"added-{rxnorm}", "status": status,
        "intent": "order", "subject": {"reference": f"Patient/{body['context']['patientId']}"},
        "authoredOn": "2026-11-10T12:00:00Z",
        "medicationCodeableConcept": {"coding": [{
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rxnorm,
            "display": display}], "text": display}}})
    return changed


def test_an_overridden_card_is_quiet_until_something_new_appears(database):
    clock = Clock()
    chart = request("reference-patient-view")
    with replica(database, clock) as client:
        [card] = call(client, chart)
        assert card["indicator"] == "warning"
        override(client, card, clock)
        clock.now += timedelta(days=3)
        assert call(client, chart) == []  # the same chart: nothing new, not repeated
        # Better (PTH lower, still high): nothing new either.
        assert call(client, with_pth(chart, 1100)) == []
        # Worse past one more limit (25 x the upper limit): shown again at once.
        [again] = call(client, with_pth(chart, 1700))
        assert again["indicator"] == "warning"
        # A new culprit drug: shown again.
        [again] = call(client, with_medication(chart, "855332", "warfarin sodium 5 MG Oral "
                                                                 "Tablet"))
        assert "warfarin" in again["summary"]


def test_quieting_holds_across_a_restart_and_on_another_replica(database):
    clock = Clock()
    chart = request("reference-patient-view")
    with replica(database, clock) as first:
        [card] = call(first, chart)
        override(first, card, clock)
    clock.now += timedelta(hours=1)
    with replica(database, clock) as restarted, replica(database, clock) as other:
        assert call(restarted, chart) == []
        assert call(other, chart) == []
        store = service_of(other.application).feedback.store
        report = build_report(store, since=None, now=clock.now)
        assert report.quieted.total == 2
        assert report.quieted.rules["warning"] == 2
        assert report.quieted.rules["calcium_binder_with_calcium_or_pth"] == 2


def test_the_quiet_period_ends(database):
    clock = Clock()
    chart = request("reference-patient-view")
    with replica(database, clock) as client:
        [card] = call(client, chart)
        override(client, card, clock)
        clock.now += timedelta(days=database.override_quiet_days - 1)
        assert call(client, chart) == []
        clock.now += timedelta(days=2)
        [card] = call(client, chart)
        assert card["indicator"] == "warning"


def test_a_card_accepted_after_its_override_quiets_nothing(database):
    clock = Clock()
    chart = request("reference-patient-view")
    with replica(database, clock) as client:
        [card] = call(client, chart)
        override(client, card, clock)
        clock.now += timedelta(minutes=5)
        response = client.post(f"/cds-services/{PATIENT_VIEW}/feedback", json={"feedback": [{
            "card": card["uuid"], "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": clock.now.isoformat()}]})
        assert response.status_code == 200
        assert len(call(client, chart)) == 1


def test_critical_cards_are_never_quieted(database):
    clock = Clock()
    chart = request("calciphylaxis-warfarin-patient-view")
    with replica(database, clock) as client:
        [card] = call(client, chart)
        assert card["indicator"] == "critical"
        override(client, card, clock)
        clock.now += timedelta(days=1)
        [again] = call(client, chart)
        assert again["indicator"] == "critical"


def test_order_cards_show_with_the_date_the_risk_was_acknowledged(database):
    clock = Clock()
    with replica(database, clock) as client:
        [card] = call(client, request("reference-patient-view"))
        # Only the code: the card names the reason as the service's own list does.
        override(client, card, clock, reason={"system": REASONS, "code": "reviewed-by-nephrology"})
        clock.now += timedelta(days=2)
        [order] = call(client, request("reference-order-sign"))
        acknowledged = f"acknowledged on {ANCHOR.date().isoformat()}: Already reviewed with " \
                       "nephrology"
        assert acknowledged in order["detail"].split("\n\n")[0]
        # Another patient's override says nothing on this one's cards.
        other = request("context-factors-warfarin")
        assert all("acknowledged" not in c["detail"] for c in call(client, other))


def test_an_override_of_another_patient_quiets_nothing(database):
    clock = Clock()
    chart = request("reference-patient-view")
    other = copy.deepcopy(chart)
    other["context"]["patientId"] = "pt-someone-else"
    for bundle in other["prefetch"].values():
        for entry in bundle.get("entry", []) if isinstance(bundle, dict) else []:
            if "subject" in entry["resource"]:
                entry["resource"]["subject"]["reference"] = "Patient/pt-someone-else"
    other["prefetch"]["patient"]["id"] = "pt-someone-else"
    with replica(database, clock) as client:
        [card] = call(client, chart)
        override(client, card, clock)
        assert len(call(client, other)) == 1


def test_what_is_stored_of_a_card_is_keyed_hashes_not_names(database):
    clock = Clock()
    with replica(database, clock) as client:
        call(client, request("reference-patient-view"))
        store = service_of(client.application).feedback.store
        with store.read() as connection:
            [row] = connection.execute(sa.select(issued_card)).all()
        assert row.fingerprint and len(row.evidence_keys) >= 5
        stored = json.dumps(row.evidence_keys)
        for word in ("calcium", "calcitriol", "pth", "warning"):
            assert word not in stored


def test_a_store_that_cannot_answer_hides_no_card(tmp_path):
    """Fail towards safety: no recall means every card is shown."""
    store = FeedbackStore(f"sqlite:///{tmp_path / 'cds.sqlite3'}")
    store.migrate()

    def broken(*_args):
        raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))

    store.recent_overrides = broken  # type: ignore[method-assign]
    recall = OverrideRecall(store, b"k" * 32, quiet_days=30, deadline_seconds=0.05,
                            reason_names={})
    assert recall("pt-reference", ANCHOR) is None
    # Once the breaker is open the store is not even asked.
    assert recall("pt-reference", ANCHOR) is None
    assert recall.guard.is_open


def test_no_recall_when_quieting_is_switched_off(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'cds.sqlite3'}")
    store.migrate()
    recall = OverrideRecall(store, b"k" * 32, quiet_days=0, deadline_seconds=0.05,
                            reason_names={})
    assert recall("pt-reference", ANCHOR) is None
    on = OverrideRecall(store, b"k" * 32, quiet_days=30, deadline_seconds=0.05,
                        reason_names={})
    assert isinstance(on("pt-reference", ANCHOR), PatientAcknowledgements)


def test_quieted_cards_are_recorded_without_the_patient(database):
    clock = Clock()
    chart = request("reference-patient-view")
    with replica(database, clock) as client:
        [card] = call(client, chart)
        override(client, card, clock)
        call(client, chart)
        store = service_of(client.application).feedback.store
        with store.read() as connection:
            [row] = connection.execute(sa.select(quieted_card)).all()
        assert row.acknowledged_card_uuid == card["uuid"]
        assert "pseudonym" not in row._fields and "patient" not in " ".join(row._fields)


def test_the_quiet_period_is_configured_in_days(tmp_path):
    from cds_service.ops.config import ConfigError, load_settings

    config = tmp_path / "service.toml"
    config.write_text("override_quiet_days = 14\n")
    assert load_settings(config).override_quiet_days == 14
    assert Settings().override_quiet_days == 30
    for wrong in ("-1", "1.5", '"30"', "true"):
        config.write_text(f"override_quiet_days = {wrong}\n")
        with pytest.raises(ConfigError, match="override_quiet_days"):
            load_settings(config)
