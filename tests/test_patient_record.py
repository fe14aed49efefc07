"""Building the PatientRecord from raw FHIR: messy shapes, units, references, other patients."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cds_service.clinical.record_builder import build_record

PID = "p1"
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def observation(value, unit, code="2731-8", when="2026-11-01T10:00:00Z", rid="o1", **extra):
    quantity = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    resource = {"resourceType": "Observation", "id": rid, "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "subject": {"reference": f"Patient/{PID}"}, "effectiveDateTime": when,
                "valueQuantity": quantity}
    resource.update(extra)
    return resource


def med_request(rid="m1", status="active", **medication):
    resource = {"resourceType": "MedicationRequest", "id": rid, "status": status,
                "intent": "order", "subject": {"reference": f"Patient/{PID}"},
                "authoredOn": "2026-10-01"}
    resource.update(medication or {"medicationCodeableConcept": {"text": "warfarin 5 mg"}})
    return resource


def record(*resources, drafts=(), as_of=None, knowledge=None):
    return build_record(knowledge, PID, list(resources), list(drafts), as_of=as_of)


@pytest.mark.parametrize("value,unit,canonical", [
    (1514, "pg/mL", 1514), (1514, "ng/L", 1514), (170, "pmol/L", 1603.1), (1514, "pg/ml", 1514),
])
def test_pth_units_are_converted_to_pg_per_ml(knowledge, value, unit, canonical):
    lab = record(observation(value, unit), knowledge=knowledge).labs[0]
    assert lab.value == pytest.approx(canonical, rel=1e-3)
    assert (lab.reported_value, lab.reported_unit) == (str(value), unit.replace("ml", "mL"))


@pytest.mark.parametrize("code,value,unit,canonical", [
    ("14879-1", 1.95, "mmol/L", 6.039), ("2000-8", 2.7, "mmol/L", 10.82),
    ("1751-7", 30, "g/L", 3.0), ("39156-5", 34, "kg/m2", 34),
])
def test_other_labs_are_converted_by_their_ucum_unit(knowledge, code, value, unit, canonical):
    lab = record(observation(value, unit, code=code), knowledge=knowledge).labs[0]
    assert lab.value == pytest.approx(canonical, rel=1e-3)


def test_unknown_unit_is_kept_unread_and_reported(knowledge):
    built = record(observation(1514, "foo/bar"), knowledge=knowledge)
    assert built.labs[0].value is None
    assert built.labs[0].unreadable_because == "unit not recognised"
    assert [u.reason for u in built.unreadable] == ["PTH: unit not recognised"]


def test_non_numeric_result_is_reported_not_guessed(knowledge):
    resource = observation(1, "pg/mL")
    del resource["valueQuantity"]
    resource["valueString"] = "1514"
    built = record(resource, knowledge=knowledge)
    assert built.labs[0].value is None and built.unreadable


def test_reference_range_high_is_converted_too(knowledge):
    resource = observation(170, "pmol/L", referenceRange=[{"high": {
        "value": 6.9, "unit": "pmol/L", "system": UCUM, "code": "pmol/L"}}])
    high = record(resource, knowledge=knowledge).labs[0].reference_high
    assert high == pytest.approx(65.07, abs=0.01)


def test_preliminary_results_are_not_used(knowledge):
    assert record(observation(1514, "pg/mL", status="preliminary"),
                  knowledge=knowledge).labs == []


def test_resources_of_another_patient_are_skipped_and_noted(knowledge):
    other = observation(2000, "pg/mL", subject={"reference": "Patient/someone-else"})
    built = record(other, knowledge=knowledge)
    assert built.labs == [] and built.unreadable[0].reason == "belongs to another patient"


def test_other_patients_patient_resource_is_not_used(knowledge):
    built = record({"resourceType": "Patient", "id": "x", "gender": "female",
                    "deceasedBoolean": True}, knowledge=knowledge)
    assert built.sex is None and not built.deceased


def test_deceased_date_time_means_deceased(knowledge):
    built = record({"resourceType": "Patient", "id": PID, "gender": "female",
                    "deceasedDateTime": "2020-05-01"}, knowledge=knowledge)
    assert built.deceased and built.sex == "female"


def test_single_object_category_and_unknown_elements_are_tolerated(knowledge):
    condition = {"resourceType": "Condition", "id": "c1",
                 "subject": {"reference": f"Patient/{PID}"},
                 "category": {"coding": [{"code": "problem-list-item"}]},
                 "clinicalStatus": {"coding": [{"code": "active"}]},
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                      "code": "N18.6"}]},
                 "someR5Element": {"x": 1}}
    built = record(condition, knowledge=knowledge)
    assert built.conditions[0].concepts == ("esrd_on_dialysis",) and built.unreadable == []


def test_datetime_without_zone_is_read_as_utc(knowledge):
    built = record(observation(1514, "pg/mL", when="2026-11-01T10:00:00"), knowledge=knowledge)
    assert built.labs[0].effective == datetime(2026, 11, 1, 10, tzinfo=UTC)


def test_invalid_resource_is_skipped_with_a_reason(knowledge):
    built = record(med_request(status="active", authoredOn="not a date",
                               medicationCodeableConcept={"text": "warfarin 5 mg"}),
                   knowledge=knowledge)
    assert built.medications == []
    assert "invalid MedicationRequest" in built.unreadable[0].reason


def test_entered_in_error_condition_is_dropped(knowledge):
    condition = {"resourceType": "Condition", "id": "c1",
                 "subject": {"reference": f"Patient/{PID}"},
                 "verificationStatus": {"coding": [{"code": "entered-in-error"}]},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "46177005"}]}}
    assert record(condition, knowledge=knowledge).conditions == []


def test_stopped_and_completed_orders_are_not_current(knowledge):
    built = record(med_request("a", "stopped"), med_request("b", "completed"),
                   med_request("c", "entered-in-error"), med_request("d", "on-hold"),
                   knowledge=knowledge)
    assert [m.reference for m in built.medications] == ["MedicationRequest/d"]


def test_medication_reference_resolved_from_the_bundle(knowledge):
    medication = {"resourceType": "Medication", "id": "med9",
                  "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                       "code": "577317"}], "text": "paricalcitol 1 MCG"}}
    order = med_request(medicationReference={"reference": "Medication/med9"})
    built = record(order, medication, knowledge=knowledge)
    assert built.medications[0].ingredient == "paricalcitol"


def test_contained_medication_is_resolved(knowledge):
    order = med_request(medicationReference={"reference": "#m"}, contained=[
        {"resourceType": "Medication", "id": "m", "code": {"text": "Hectorol 2.5 mcg"}}])
    assert record(order, knowledge=knowledge).medications[0].ingredient == "doxercalciferol"


def test_unresolvable_medication_reference_uses_its_display_or_is_noted(knowledge):
    with_display = med_request("a", medicationReference={"reference": "Medication/zz",
                                                         "display": "Coumadin 5 mg"})
    without = med_request("b", medicationReference={"reference": "Medication/yy"})
    built = record(with_display, without, knowledge=knowledge)
    assert [m.ingredient for m in built.medications] == ["warfarin"]
    assert built.unreadable[0].reason == "medication reference not included"


def test_draft_orders_are_marked_as_drafts_and_keep_their_order(knowledge):
    drafts = [med_request("z", "draft"), med_request("a", "draft")]
    built = record(drafts=drafts, knowledge=knowledge)
    assert [(m.reference, m.is_draft) for m in built.medications] == [
        ("MedicationRequest/z", True), ("MedicationRequest/a", True)]


def test_only_the_newest_dialysis_session_is_validated_when_now_is_known(knowledge):
    sessions = [{"resourceType": "Procedure", "id": f"hd{i}", "status": "completed",
                 "subject": {"reference": f"Patient/{PID}"},
                 "code": {"coding": [{"system": "http://snomed.info/sct",
                                      "code": "302497006"}]},
                 "performedDateTime": f"2026-{1 + i % 10:02d}-{1 + i % 28:02d}T08:00:00Z"}
                for i in range(200)]
    future = dict(sessions[0], id="future", performedDateTime="2027-01-01T08:00:00Z")
    built = record(*sessions, future, as_of=NOW, knowledge=knowledge)
    assert len(built.procedures) == 1
    assert built.procedures[0].performed == datetime(2026, 10, 28, 8, tzinfo=UTC)
    assert len(record(*sessions, knowledge=knowledge).procedures) == 200


def test_newer_unreadable_results_are_kept_with_the_latest_readable_one(knowledge):
    built = record(observation(300, "pg/mL", when="2026-06-01T00:00:00Z", rid="old"),
                   observation(1514, "pg/mL", when="2026-10-01T00:00:00Z", rid="valid"),
                   observation(9, "foo", when="2026-11-01T00:00:00Z", rid="bad"),
                   as_of=NOW, knowledge=knowledge)
    assert [lab.reference for lab in built.labs] == ["Observation/bad", "Observation/valid"]


def test_junk_entries_never_raise(knowledge):
    junk = [None, 3, "x", [], {}, {"resourceType": 5}, {"resourceType": "Observation"},
            {"resourceType": "Condition", "code": "N18.6"},
            {"resourceType": "MedicationRequest", "status": "active", "medicationReference": 7}]
    built = record(*junk, knowledge=knowledge)
    assert built.medications == [] and built.conditions == []


def test_free_dosage_text_does_not_make_a_systemic_steroid_topical(knowledge):
    order = med_request(medicationCodeableConcept={"text": "prednisone 20 MG Oral Tablet"},
                        dosageInstruction=[{"text": "20 mg daily for uveitis (eye)"}])
    assert record(order, knowledge=knowledge).medications[0].excluded_because is None


def test_a_coded_route_still_marks_a_non_systemic_product(knowledge):
    order = med_request(medicationCodeableConcept={"text": "dexamethasone 0.1 %"},
                        dosageInstruction=[{"route": {"text": "Ophthalmic route"}}])
    assert record(order, knowledge=knowledge).medications[0].excluded_because is not None


def test_do_not_perform_orders_are_not_exposure(knowledge):
    warfarin = {"medicationCodeableConcept": {"text": "warfarin 5 mg"}}
    assert record(med_request(**warfarin), knowledge=knowledge).medications
    assert record(med_request(doNotPerform=True, **warfarin),
                  knowledge=knowledge).medications == []


def test_an_active_order_past_its_dispensing_validity_is_still_current(knowledge):
    order = med_request(dispenseRequest={"validityPeriod": {"end": "2026-10-01"}},
                        medicationCodeableConcept={"text": "warfarin 5 mg"})
    assert record(order, knowledge=knowledge).medications[0].ends is None


# --- real-world shapes (issue: read what real EHRs send) -------------------------------------
SNOMED = "http://snomed.info/sct"
RANGE = "http://terminology.hl7.org/CodeSystem/referencerange-meaning"


def pth_with_ranges(*ranges):
    return observation(700, "pg/mL", referenceRange=list(ranges))


def high(value, kind=None):
    found = {"high": {"value": value, "unit": "pg/mL", "system": UCUM, "code": "pg/mL"}}
    if kind:
        found["type"] = {"coding": [{"system": RANGE, "code": kind}]}
    return found


@pytest.mark.parametrize("ranges,uln", [
    ([high(585, "treatment"), high(65)], 65.0),  # the target range listed first is skipped
    ([high(65, "normal")], 65.0),
    ([high(585, "recommended")], None),  # only a target: the default ULN applies later
    ([high(585, "therapeutic"), high(88, "normal")], 88.0),
])
def test_only_a_normal_range_gives_the_upper_limit(knowledge, ranges, uln):
    assert record(pth_with_ranges(*ranges), knowledge=knowledge).labs[0].reference_high == uln


@pytest.mark.parametrize("code,lab", [
    ("1994-3", "ionized_calcium"), ("29265-6", "corrected_calcium"), ("61151-7", "albumin"),
    ("61152-5", "albumin"),
])
def test_more_laboratory_codes_are_read(knowledge, code, lab):
    unit = "g/dL" if lab == "albumin" else "mmol/L"
    assert record(observation(1.4, unit, code=code), knowledge=knowledge).labs[0].lab == lab


def test_a_value_string_result_is_read_with_its_comparator(knowledge):
    resource = observation(1, "pg/mL")
    del resource["valueQuantity"]
    resource["valueString"] = ">2500 pg/mL"
    lab = record(resource, knowledge=knowledge).labs[0]
    assert (lab.value, lab.comparator, lab.reported_value) == (2500.0, ">", ">2500")


def bounded(rid, *, end=None, duration=None, authored="2026-10-01", status="active"):
    repeat = {}
    if end:
        repeat["boundsPeriod"] = {"start": "2026-09-01", "end": end}
    if duration:
        repeat["boundsDuration"] = {"value": duration, "unit": "days", "system": UCUM,
                                    "code": "d"}
    return med_request(rid, status, authoredOn=authored,
                       medicationCodeableConcept={"text": "prednisone 40 mg"},
                       dosageInstruction=[{"text": "daily", "timing": {"repeat": repeat}}])


def test_an_active_order_whose_bounds_ended_is_not_current(knowledge):
    built = record(bounded("a", end="2026-11-10"), bounded("b", duration=14),
                   bounded("c", end="2026-12-31"), bounded("d", duration=60), as_of=NOW,
                   knowledge=knowledge)
    assert sorted(m.reference for m in built.medications) == [
        "MedicationRequest/c", "MedicationRequest/d"]


def test_an_order_with_one_open_ended_instruction_has_no_end(knowledge):
    order = bounded("a", end="2026-11-10")
    order["dosageInstruction"].append({"text": "then 5 mg daily"})
    assert record(order, as_of=NOW, knowledge=knowledge).medications[0].ends is None


def administration(rid, when, status="completed", text="Paricalcitol 5 mcg/mL injection"):
    return {"resourceType": "MedicationAdministration", "id": rid, "status": status,
            "subject": {"reference": f"Patient/{PID}"}, "effectiveDateTime": when,
            "medicationCodeableConcept": {"text": text},
            "dosage": {"route": {"text": "Intravenous"}, "text": "given at dialysis"}}


def test_the_newest_recent_dose_given_of_each_medicine_is_read(knowledge):
    built = record(administration("a1", "2026-11-18T10:00:00Z"),
                   administration("a2", "2026-11-15T10:00:00Z"),
                   administration("a3", "2026-11-19T10:00:00Z", status="not-done"),
                   administration("a4", "2026-11-17T10:00:00Z", status="entered-in-error"),
                   administration("a5", "2026-08-01T10:00:00Z",
                                  text="Doxercalciferol 4 mcg injection"),
                   as_of=NOW, knowledge=knowledge)
    assert [(m.reference, m.kind) for m in built.medications] == [
        ("MedicationAdministration/a1", "administration")]


def dialysis_visit(rid, when, status="finished", **kind):
    resource = {"resourceType": "Encounter", "id": rid, "status": status,
                "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{PID}"},
                "period": {"start": when}}
    resource.update(kind or {"type": [{"coding": [{"system": SNOMED, "code": "302497006"}]}]})
    return resource


def test_dialysis_encounters_count_like_sessions_but_not_cancelled_ones(knowledge):
    built = record(dialysis_visit("e1", "2026-11-18"),
                   dialysis_visit("e2", "2026-11-19", status="cancelled"),
                   dialysis_visit("e3", "2026-11-17", reasonCode=[{"text": "Hemodialysis"}]),
                   as_of=NOW, knowledge=knowledge)
    assert [p.reference for p in built.procedures] == ["Encounter/e1"]


def test_local_procedure_text_is_read_with_the_code_exclusions(knowledge):
    def local(rid, text):
        return {"resourceType": "Procedure", "id": rid, "status": "completed",
                "subject": {"reference": f"Patient/{PID}"}, "performedDateTime": "2026-11-18",
                "code": {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580",
                                     "code": "4471"}], "text": text}}
    assert record(local("p1", "HEMODIALYSIS (OUTPATIENT)"), as_of=NOW,
                  knowledge=knowledge).procedures[0].concept == "dialysis"
    for text in ("Hemodialysis catheter insertion", "AV fistula creation for dialysis access",
                 "CRRT (CVVHDF)", "Dialysis education"):
        assert record(local("p2", text), as_of=NOW, knowledge=knowledge).procedures == []


def test_single_dose_steroids_do_not_count_but_courses_do(knowledge):
    def steroid(rid, text, count=None):
        dosage = {"text": text}
        if count:
            dosage["timing"] = {"repeat": {"count": count}}
        return med_request(rid, medicationCodeableConcept={"text": "dexamethasone 8 mg"},
                           dosageInstruction=[dosage])
    built = record(steroid("a", "8 mg IV once before chemotherapy"), steroid("b", "x1"),
                   steroid("c", "8 mg", count=1), steroid("d", "4 mg once daily"),
                   steroid("e", "4 mg twice daily for 5 days"), as_of=NOW, knowledge=knowledge)
    counted = {m.reference for m in built.medications if not m.excluded_because}
    assert counted == {"MedicationRequest/d", "MedicationRequest/e"}


def test_orders_of_no_risk_class_are_not_validated(knowledge, monkeypatch):
    """Most orders on a chart match no rule: they are skipped before fhir.resources runs."""
    import cds_service.fhir.read as fhir_read

    validated = []
    real = fhir_read.validate
    monkeypatch.setattr(fhir_read, "validate", lambda r: validated.append(r["id"]) or real(r))
    fhir_read.VALIDATION_MEMO.clear()
    record(med_request("amlodipine", medicationCodeableConcept={"text": "amlodipine 5 mg"}),
           med_request("warfarin"), as_of=NOW, knowledge=knowledge)
    assert validated == ["warfarin"]


def test_the_same_content_is_validated_once_and_judged_the_same_again(knowledge, monkeypatch):
    import cds_service.fhir.read as fhir_read

    validated = []
    real = fhir_read.validate
    monkeypatch.setattr(fhir_read, "validate", lambda r: validated.append(r["id"]) or real(r))
    fhir_read.VALIDATION_MEMO.clear()
    bad = med_request("bad", authoredOn="not a date",
                      medicationCodeableConcept={"text": "warfarin 5 mg"})
    for _ in range(3):
        built = record(med_request("good"), bad, as_of=NOW, knowledge=knowledge)
        assert [m.reference for m in built.medications] == ["MedicationRequest/good"]
        assert "invalid MedicationRequest" in built.unreadable[0].reason
    assert sorted(validated) == ["bad", "good"]  # once each, then remembered
    changed = med_request("good", status="on-hold")  # other content: validated afresh
    record(changed, as_of=NOW, knowledge=knowledge)
    assert sorted(validated) == ["bad", "good", "good"]


@pytest.mark.parametrize("text,ingredient", [
    ("Warfarina sódica 5 mg", "warfarin"), ("acetato de calcio 667 mg", "calcium acetate"),
    ("CARBONATO DE CALCIO 500 MG", "calcium carbonate"), ("Prednisona 5 mg", "prednisone"),
    ("Metilprednisolona 4 mg", "methylprednisolone"), ("Ciclosporina 100 mg", "cyclosporine"),
    ("Calcium citrate 950 mg", "calcium citrate"), ("Citrato de calcio", "calcium citrate"),
])
def test_spanish_names_and_calcium_citrate_are_recognised(knowledge, text, ingredient):
    built = record(med_request(medicationCodeableConcept={"text": text}), knowledge=knowledge)
    assert built.medications[0].ingredient == ingredient
