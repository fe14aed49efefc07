"""Prefetch: one definition of each search serves discovery's template and the fallback query."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cds_service.fhir.prefetch import gather
from cds_service.fhir.searches import patient_searches, prefetch_templates

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


class Recorder:
    """A fetcher that records what it was asked for (and has nothing to give): stands in for
    the FHIR client."""

    def __init__(self):
        self.keys: list[str] = []
        self.references: list[str] = []

    def fetch(self, request, keys, now, deadline, stats, optional=frozenset()):
        self.keys += keys
        return {key: [] for key in keys}

    def read(self, request, references, deadline, stats):
        self.references += references
        return []


class Request:
    def __init__(self, prefetch):
        self.prefetch = prefetch
        self.draft_orders = []


class Stats:
    fetch_seconds = 0.0


def test_discovery_asks_for_dialysis_encounters_and_doses_given(knowledge):
    templates = prefetch_templates(knowledge)
    assert templates["encounters"].startswith("Encounter?patient={{context.patientId}}")
    assert templates["medicationAdministrations"] == (
        "MedicationAdministration?patient={{context.patientId}}&status=completed,in-progress"
        "&_include=MedicationAdministration:medication")


def test_fallback_queries_ask_for_what_the_templates_ask_plus_a_date_window(knowledge):
    searches = {s.key: s for s in patient_searches(knowledge)}
    path, params = searches["medicationAdministrations"].fallback("p1", NOW, 50)
    assert path == "MedicationAdministration"
    assert params["status"] == "completed,in-progress"  # the same statuses as the template
    assert params["effective-time"] == "ge2026-10-20" and params["_sort"] == "-effective-time"
    _path, encounters = searches["encounters"].fallback("p1", NOW, 50)
    assert encounters["date"] == "ge2026-08-21"
    _path, procedures = searches["procedures"].fallback("p1", NOW, 50)
    assert "date" not in procedures  # a transplant years ago still decides dialysis scope


def visit(days: float) -> dict:
    return {"resource": {"resourceType": "Encounter", "id": f"e{days}",
                         "period": {"start": (NOW - timedelta(days=days)).isoformat()}}}


def paged(*entries) -> dict:
    return {"resourceType": "Bundle", "type": "searchset", "entry": list(entries),
            "link": [{"relation": "next", "url": "http://fhir.example/next"}]}


def everything_but(key: str, value) -> dict:
    empty = {"resourceType": "Bundle", "type": "searchset"}
    keys = ("patient", "conditions", "procedures", "encounters", "medications",
            "medicationStatements", "medicationAdministrations", "observations")
    return {k: (value if k == key else empty) for k in keys}


def test_a_paged_newest_first_page_reaching_past_the_window_needs_no_fetch(knowledge):
    fetcher = Recorder()
    prefetch = everything_but("encounters", paged(visit(2), visit(40), visit(120)))
    gather(Request(prefetch), patient_searches(knowledge), fetcher, NOW, 1e12, Stats())
    assert fetcher.keys == []


def test_a_paged_page_within_the_window_is_fetched_whole(knowledge):
    fetcher = Recorder()
    prefetch = everything_but("encounters", paged(visit(2), visit(40)))
    gather(Request(prefetch), patient_searches(knowledge), fetcher, NOW, 1e12, Stats())
    assert fetcher.keys == ["encounters"]


class NoServer(Recorder):
    """Like prefetch-only operation: required keys cannot be had, optional ones are skipped."""

    def fetch(self, request, keys, now, deadline, stats, optional=frozenset()):
        from cds_service.fhir.prefetch import NoFetcher

        self.keys += keys
        return NoFetcher().fetch(request, keys, now, deadline, stats, optional)


def test_optional_evidence_missing_everywhere_is_gone_without_not_refused(knowledge):
    prefetch = everything_but("encounters", None)
    del prefetch["encounters"], prefetch["medicationAdministrations"]
    data = gather(Request(prefetch), patient_searches(knowledge), NoServer(), NOW, 1e12, Stats())
    assert data.unavailable == ["encounters", "medicationAdministrations"]


def test_a_required_key_missing_everywhere_is_still_a_412(knowledge):
    import pytest

    from cds_service.errors import DataUnavailable

    prefetch = everything_but("observations", None)
    del prefetch["observations"]
    with pytest.raises(DataUnavailable):
        gather(Request(prefetch), patient_searches(knowledge), NoServer(), NOW, 1e12, Stats())


def test_resources_under_a_key_the_client_named_itself_are_read(knowledge):
    dose = {"resourceType": "MedicationAdministration", "id": "d1"}
    prefetch = everything_but("encounters", {"resourceType": "Bundle", "type": "searchset"})
    del prefetch["medicationAdministrations"]
    prefetch["givenDoses"] = {"resourceType": "Bundle", "entry": [{"resource": dose}]}
    fetcher = Recorder()
    data = gather(Request(prefetch), patient_searches(knowledge), fetcher, NOW, 1e12, Stats())
    assert dose in data.resources and fetcher.keys == []


def _order_select(medication: dict | None) -> dict:
    draft = {"resourceType": "MedicationRequest", "id": "draft-1", "status": "draft",
             "intent": "order", "subject": {"reference": "Patient/p1"}, **(medication or {})}
    return {"hook": "order-select", "hookInstance": "d6d5b6b2-7b8e-4b8f-9d0c-1a2b3c4d5e6f",
            "fhirServer": "http://127.0.0.1:9/fhir",
            "context": {"userId": "Practitioner/1", "patientId": "p1",
                        "selections": ["MedicationRequest/draft-1"],
                        "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                        "entry": [{"resource": draft}]}}}


def test_order_select_with_no_drug_chosen_asks_the_fhir_server_nothing():
    """The Sandbox sends order-select on page load with an empty draft: no card can follow."""
    from cds_service.bootstrap import create_engine
    from cds_service.cdshooks.services import SERVICES

    fetcher = Recorder()
    engine = create_engine(fetcher=fetcher)
    service = SERVICES["calciphylaxis-order-select"]
    now = datetime(2026, 11, 20, tzinfo=UTC)
    assert engine.call(service, _order_select(None), now) == {"cards": []}
    empty = {"medicationCodeableConcept": {"coding": []}}
    assert engine.call(service, _order_select(empty), now) == {"cards": []}
    assert fetcher.keys == [] and fetcher.references == []
    # With a drug chosen the patient's data is needed, and asked for.
    warfarin = {"medicationCodeableConcept": {"text": "warfarin 5 mg tablet"}}
    engine.call(service, _order_select(warfarin), now)
    assert "medications" in fetcher.keys
