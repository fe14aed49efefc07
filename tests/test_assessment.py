"""Unit tests of the clinical rules (docs/clinical.md) on hand-built records and a fixed now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cds_service.clinical.assessment import assess
from cds_service.clinical.record import (
    ConditionEntry,
    LabResult,
    Medication,
    PatientRecord,
    ProcedureEntry,
)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def days_ago(n: float) -> datetime:
    return NOW - timedelta(days=n)


def condition(concept: str, code: str = "X", status: str | None = "active",
              abated: bool = False, *, also: tuple[str, ...] = (), onset_days: float = 1000,
              certainty: str = "confirmed") -> ConditionEntry:
    concepts = (concept, *also)
    return ConditionEntry(f"Condition/{concept}-{code}", concepts, (code,) * len(concepts),
                          concept, status, "confirmed", days_ago(onset_days), abated,
                          days_ago(onset_days), certainty)


def dialysis(on: datetime) -> ProcedureEntry:
    return ProcedureEntry("Procedure/hd", "dialysis", "302497006", "Hemodialysis", "completed", on)


def medication(cls: str, ingredient: str, *, draft: bool = False, ends: datetime | None = None,
               excluded: str | None = None, ref: str = "MedicationRequest/m1") -> Medication:
    return Medication(ref, ingredient, ingredient, cls, "name", "draft" if draft else "active",
                      draft, days_ago(30), ends, excluded)


def lab(kind: str, value: float | None, when: datetime, *, high: float | None = None,
        unit: str = "pg/mL", comparator: str | None = None) -> LabResult:
    return LabResult(f"Observation/{kind}-{when.date()}", kind, "2731-8", value, comparator,
                     str(value), unit, when, "final", reference_high=high,
                     unreadable_because=None if value is not None else "unit not recognised")


def on_dialysis(**kwargs) -> PatientRecord:
    record = PatientRecord(patient_id="p1", sex="male")
    record.conditions.append(condition("esrd_on_dialysis", "N18.6"))
    record.procedures.append(dialysis(days_ago(3)))
    for key, value in kwargs.items():
        getattr(record, key).extend(value)
    return record


def factor_ids(assessment) -> set[str]:
    return {f.factor.id for f in assessment.findings}


# --- scope ------------------------------------------------------------------------------------

def test_active_esrd_diagnosis_alone_puts_patient_in_scope(knowledge):
    record = PatientRecord("p1", conditions=[condition("esrd_on_dialysis", "N18.6")])
    assert assess(record, knowledge, NOW).in_scope


def test_dialysis_within_90_days_puts_patient_in_scope_without_diagnosis(knowledge):
    record = PatientRecord("p1", procedures=[dialysis(days_ago(89))])
    assert assess(record, knowledge, NOW).in_scope


def test_dialysis_91_days_ago_without_diagnosis_is_out_of_scope(knowledge):
    record = PatientRecord("p1", procedures=[dialysis(days_ago(91))])
    assert not assess(record, knowledge, NOW).in_scope


def test_resolved_esrd_is_not_in_scope(knowledge):
    record = PatientRecord("p1", conditions=[condition("esrd_on_dialysis", status="resolved")])
    assert not assess(record, knowledge, NOW).in_scope


def test_esrd_without_clinical_status_counts_unless_abated(knowledge):
    assert assess(PatientRecord("p1", conditions=[condition("esrd_on_dialysis", status=None)]),
                  knowledge, NOW).in_scope
    assert not assess(PatientRecord("p1", conditions=[
        condition("esrd_on_dialysis", status=None, abated=True)]), knowledge, NOW).in_scope


def test_transplant_with_resolved_esrd_and_no_recent_dialysis_is_out_of_scope(knowledge):
    record = PatientRecord("p1", conditions=[condition("esrd_on_dialysis", status="resolved"),
                                             condition("kidney_transplant", "Z94.0")],
                           procedures=[dialysis(days_ago(400))])
    result = assess(record, knowledge, NOW)
    assert not result.in_scope and "transplant" in result.scope_reason


def test_dialysis_dependence_recorded_after_a_transplant_keeps_the_patient_in_scope(knowledge):
    """A failed graft back on dialysis, in an EHR that records no dialysis Procedures."""
    record = PatientRecord("p1", conditions=[
        condition("esrd_on_dialysis", "Z99.2", also=("dialysis_dependence",), onset_days=30),
        condition("kidney_transplant", "Z94.0", onset_days=700)])
    result = assess(record, knowledge, NOW)
    assert result.in_scope and "after kidney transplant" in result.scope_reason


def test_esrd_left_on_the_problem_list_after_a_transplant_is_out_of_scope(knowledge):
    """Problem lists are rarely cleaned: N18.6 from before the transplant does not count."""
    record = PatientRecord("p1", conditions=[
        condition("esrd_on_dialysis", "N18.6", onset_days=2000),
        condition("kidney_transplant", "Z94.0", onset_days=700)])
    assert not assess(record, knowledge, NOW).in_scope


def test_dialysis_dependence_recorded_before_the_transplant_does_not_count(knowledge):
    record = PatientRecord("p1", conditions=[
        condition("esrd_on_dialysis", "Z99.2", also=("dialysis_dependence",), onset_days=900),
        condition("kidney_transplant", "Z94.0", onset_days=700)])
    assert not assess(record, knowledge, NOW).in_scope


def transplant(on: datetime) -> ProcedureEntry:
    return ProcedureEntry("Procedure/tx", "kidney_transplant", "70536003",
                          "Transplant of kidney", "completed", on, "http://snomed.info/sct")


def test_transplant_after_the_last_dialysis_ends_scope_despite_active_esrd(knowledge):
    record = PatientRecord("p1", conditions=[condition("esrd_on_dialysis", "N18.6")],
                           procedures=[dialysis(days_ago(60)), transplant(days_ago(50))])
    assert not assess(record, knowledge, NOW).in_scope


def test_dialysis_for_delayed_graft_function_that_stopped_does_not_count(knowledge):
    record = PatientRecord("p1", conditions=[condition("esrd_on_dialysis", "N18.6")],
                           procedures=[transplant(days_ago(60)), dialysis(days_ago(52))])
    assert not assess(record, knowledge, NOW).in_scope


def test_dialysis_after_a_transplant_in_the_last_14_days_is_graft_failure(knowledge):
    record = PatientRecord("p1", procedures=[transplant(days_ago(700)), dialysis(days_ago(13))])
    assert assess(record, knowledge, NOW).in_scope
    stopped = PatientRecord("p1", procedures=[transplant(days_ago(700)), dialysis(days_ago(15))])
    assert not assess(stopped, knowledge, NOW).in_scope


def cpt(code: str, on: datetime) -> ProcedureEntry:
    return ProcedureEntry(f"Procedure/{code}", "dialysis", code, "Dialysis", "completed", on,
                          "http://www.ama-assn.org/go/cpt")


def test_cpt_90945_alone_with_acute_kidney_injury_is_acute_dialysis(knowledge):
    record = PatientRecord("p1", conditions=[condition("acute_kidney_injury", "N17.9")],
                           procedures=[cpt("90945", days_ago(3)), cpt("90947", days_ago(2))])
    result = assess(record, knowledge, NOW)
    assert not result.in_scope and "acute" in result.scope_reason


@pytest.mark.parametrize("also", [
    {"conditions": [condition("esrd_on_dialysis", "N18.6")]},  # a chronic diagnosis
    {"procedures": [cpt("90935", days_ago(40))]},  # another session code in 90 days
    {"conditions": []},  # no acute kidney injury: continuous PD is maintenance dialysis
])
def test_cpt_90945_counts_with_a_chronic_diagnosis_another_session_or_no_aki(knowledge, also):
    record = PatientRecord("p1", procedures=[cpt("90945", days_ago(3))])
    if also.get("conditions") != []:
        record.conditions.append(condition("acute_kidney_injury", "N17.9"))
    for key, values in also.items():
        getattr(record, key).extend(values)
    assert assess(record, knowledge, NOW).in_scope


def test_failed_transplant_back_on_dialysis_is_in_scope(knowledge):
    record = PatientRecord("p1", conditions=[condition("kidney_transplant", "Z94.0")],
                           procedures=[dialysis(days_ago(2))])
    assert assess(record, knowledge, NOW).in_scope


def test_untreated_esrd_is_out_of_scope(knowledge):
    record = PatientRecord("p1", conditions=[condition("esrd_untreated", "236434000"),
                                             condition("esrd_on_dialysis", "46177005")])
    assert not assess(record, knowledge, NOW).in_scope


def test_deceased_patient_is_out_of_scope_even_on_dialysis(knowledge):
    record = on_dialysis(medications=[medication("vitamin_k_antagonist", "warfarin")])
    record.deceased = True
    result = assess(record, knowledge, NOW)
    assert not result.in_scope and result.findings == []


def test_future_dated_dialysis_does_not_count(knowledge):
    record = PatientRecord("p1", procedures=[dialysis(NOW + timedelta(days=2))])
    assert not assess(record, knowledge, NOW).in_scope


# --- medicines --------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,factor", [
    ("vitamin_k_antagonist", "vitamin_k_antagonist"),
    ("calcium_binder", "calcium_binder"),
    ("active_vitamin_d", "active_vitamin_d"),
    ("systemic_corticosteroid", "systemic_corticosteroid"),
    ("calcineurin_inhibitor", "calcineurin_inhibitor"),
])
def test_each_current_culprit_drug_is_a_firing_factor(knowledge, cls, factor):
    result = assess(on_dialysis(medications=[medication(cls, "drug")]), knowledge, NOW)
    assert [f.factor.id for f in result.firing] == [factor]
    assert result.on_culprit_drug


def test_order_whose_validity_ended_is_not_current(knowledge):
    record = on_dialysis(medications=[medication("vitamin_k_antagonist", "warfarin",
                                                 ends=days_ago(1))])
    assert assess(record, knowledge, NOW).firing == []


def test_excluded_product_is_not_a_factor_but_is_listed_as_not_counted(knowledge):
    record = on_dialysis(medications=[medication("systemic_corticosteroid", "hydrocortisone",
                                                 excluded="non-systemic form (cream)")])
    result = assess(record, knowledge, NOW)
    assert result.firing == [] and len(result.not_counted) == 1


def test_draft_order_is_judged_as_an_order_not_as_a_current_drug(knowledge):
    record = on_dialysis(medications=[medication("calcium_binder", "calcium acetate",
                                                 draft=True)])
    result = assess(record, knowledge, NOW)
    assert result.firing == []
    assert [d.order.ingredient for d in result.draft_findings] == ["calcium acetate"]
    assert {s.id for s in result.draft_findings[0].substitutes} == {
        "sevelamer_carbonate", "lanthanum_carbonate"}


def test_order_select_judges_only_the_selected_drafts(knowledge):
    record = on_dialysis(medications=[
        medication("calcium_binder", "calcium acetate", draft=True, ref="MedicationRequest/a"),
        medication("vitamin_k_antagonist", "warfarin", draft=True, ref="MedicationRequest/b"),
    ])
    result = assess(record, knowledge, NOW, selections=frozenset({"MedicationRequest/b"}))
    assert [d.order.ingredient for d in result.draft_findings] == ["warfarin"]
    assert [m.ingredient for m in result.draft_findings[0].other_drafts] == ["calcium acetate"]


def calcium(value: float) -> LabResult:
    return LabResult("Observation/ca", "calcium", "17861-6", value, None, str(value), "mg/dL",
                     days_ago(10), "final")


def test_calcimimetic_is_added_for_vitamin_d_only_when_pth_is_high_and_calcium_allows(knowledge):
    vdra = medication("active_vitamin_d", "calcitriol", draft=True)

    def offered(pth, *more):
        result = assess(on_dialysis(medications=[vdra, *more[1:]],
                                    labs=[lab("pth", pth, days_ago(10)), *more[:1]]),
                        knowledge, NOW)
        return [(s.substitute.id, s.replaces) for s in result.draft_findings[0].suggestions]

    assert offered(300, calcium(9.2)) == []  # PTH not high
    assert offered(900, calcium(9.2)) == [("cinacalcet", None)]  # added, the draft is kept
    assert offered(900, calcium(8.3)) == []  # the label: not below 8.4 mg/dL
    assert offered(900) == []  # calcium unknown: not offered
    on_cinacalcet = medication("calcimimetic", "cinacalcet", ref="MedicationRequest/c1")
    assert offered(900, calcium(9.2), on_cinacalcet) == []  # never a second calcimimetic


def test_warfarin_draft_has_no_automatic_substitute(knowledge):
    result = assess(on_dialysis(medications=[medication("vitamin_k_antagonist", "warfarin",
                                                        draft=True)]), knowledge, NOW)
    assert result.draft_findings[0].substitutes == ()


# --- labs: thresholds, windows, latest value --------------------------------------------------

@pytest.mark.parametrize("value,fires", [(585.0, False), (585.1, True), (1514.0, True)])
def test_pth_fires_above_nine_times_the_default_upper_limit(knowledge, value, fires):
    result = assess(on_dialysis(labs=[lab("pth", value, days_ago(10))]), knowledge, NOW)
    assert ("high_pth" in factor_ids(result)) is fires


def test_pth_threshold_uses_the_assay_upper_limit_when_given(knowledge):
    at_88 = [lab("pth", 700, days_ago(10), high=88)]  # threshold 792
    at_65 = [lab("pth", 800, days_ago(10), high=88)]
    assert "high_pth" not in factor_ids(assess(on_dialysis(labs=at_88), knowledge, NOW))
    finding = assess(on_dialysis(labs=at_65), knowledge, NOW).findings[0]
    assert finding.evidence[0].threshold == pytest.approx(792)
    assert finding.evidence[0].uln_from_assay


@pytest.mark.parametrize("age,fires", [(179, True), (181, False)])
def test_pth_counts_within_180_days_only(knowledge, age, fires):
    result = assess(on_dialysis(labs=[lab("pth", 1514, days_ago(age))]), knowledge, NOW)
    assert ("high_pth" in factor_ids(result)) is fires


def test_stale_pth_means_pth_overdue(knowledge):
    result = assess(on_dialysis(labs=[lab("pth", 1514, days_ago(300))]), knowledge, NOW)
    assert result.pth_overdue and result.firing == []


def test_superseded_abnormal_pth_does_not_fire(knowledge):
    labs = [lab("pth", 1514, days_ago(150)), lab("pth", 300, days_ago(30))]
    result = assess(on_dialysis(labs=labs), knowledge, NOW)
    assert "high_pth" not in factor_ids(result) and not result.pth_overdue


def test_unreadable_newer_result_is_reported_and_older_valid_one_used(knowledge):
    labs = [lab("pth", 1514, days_ago(40)), lab("pth", None, days_ago(5), unit="foo")]
    result = assess(on_dialysis(labs=labs), knowledge, NOW)
    assert "high_pth" in factor_ids(result)
    assert [n.lab for n in result.lab_notes] == ["pth"]


def test_only_unreadable_pth_fires_nothing_and_counts_as_not_measured(knowledge):
    result = assess(on_dialysis(labs=[lab("pth", None, days_ago(5), unit="foo")]), knowledge,
                    NOW)
    assert result.firing == [] and result.pth_overdue and len(result.lab_notes) == 1


def test_result_dated_in_the_future_is_ignored(knowledge):
    result = assess(on_dialysis(labs=[lab("pth", 1514, NOW + timedelta(days=3))]), knowledge,
                    NOW)
    assert result.firing == []


@pytest.mark.parametrize("kind,value,factor,fires", [
    ("phosphate", 5.5, "hyperphosphatemia", False),
    ("phosphate", 5.51, "hyperphosphatemia", True),
    ("calcium", 10.2, "hypercalcemia", False),
    ("calcium", 10.21, "hypercalcemia", True),
    ("albumin", 3.5, "low_albumin", False),
    ("albumin", 3.49, "low_albumin", True),
    ("bmi", 29.9, "obesity", False),
    ("bmi", 30.0, "obesity", True),
])
def test_lab_thresholds_at_their_boundaries(knowledge, kind, value, factor, fires):
    result = assess(on_dialysis(labs=[lab(kind, value, days_ago(10))]), knowledge, NOW)
    assert (factor in factor_ids(result)) is fires


@pytest.mark.parametrize("kind,window", [("phosphate", 90), ("calcium", 90), ("albumin", 90),
                                         ("bmi", 365)])
def test_lab_windows(knowledge, kind, window):
    abnormal = {"phosphate": 7.0, "calcium": 11.0, "albumin": 2.5, "bmi": 35}[kind]
    inside = assess(on_dialysis(labs=[lab(kind, abnormal, days_ago(window - 1))]), knowledge, NOW)
    outside = assess(on_dialysis(labs=[lab(kind, abnormal, days_ago(window + 1))]), knowledge,
                     NOW)
    assert inside.findings and not outside.findings


@pytest.mark.parametrize("kind,value,fires", [
    ("phosphate", 1.78, False), ("phosphate", 1.79, True),
    # KDOQI 2003 publishes the calcium limit as 2.54 mmol/L (10.2 mg/dL / 4.008 = 2.545).
    ("calcium", 2.54, False), ("calcium", 2.55, True),
])
def test_mmol_limits_are_compared_as_published_not_after_rounding(knowledge, kind, value,
                                                                  fires):
    factor = {"phosphate": "hyperphosphatemia", "calcium": "hypercalcemia"}[kind]
    canonical = value * knowledge.labs[kind].units["mmol/L"]
    result = LabResult(f"Observation/{kind}", kind, "x", canonical, None, str(value), "mmol/L",
                       days_ago(5), "final")
    assert (factor in factor_ids(assess(on_dialysis(labs=[result]), knowledge, NOW))) is fires


def test_comparator_below_cannot_exceed_a_threshold(knowledge):
    result = assess(on_dialysis(labs=[lab("pth", 2000, days_ago(5), comparator="<")]),
                    knowledge, NOW)
    assert "high_pth" not in factor_ids(result)


def test_comparator_above_a_high_value_fires(knowledge):
    result = assess(on_dialysis(labs=[lab("pth", 2500, days_ago(5), comparator=">")]),
                    knowledge, NOW)
    assert "high_pth" in factor_ids(result)


# --- context factors and severity -------------------------------------------------------------

def test_context_factors_do_not_fire_on_their_own(knowledge):
    record = on_dialysis(conditions=[condition("diabetes", "E11.9"),
                                     condition("obesity", "E66.01"),
                                     condition("hypercoagulable", "D68.59"),
                                     condition("primary_hyperparathyroidism", "E21.0")],
                         labs=[lab("albumin", 2.9, days_ago(5)), lab("pth", 300, days_ago(5))])
    record.sex = "female"
    result = assess(record, knowledge, NOW)
    assert result.firing == []
    assert {f.factor.id for f in result.context} == {
        "diabetes", "obesity", "hypercoagulable", "primary_hyperparathyroidism", "female_sex",
        "low_albumin"}


def test_factors_are_listed_in_knowledge_order(knowledge):
    record = on_dialysis(medications=[medication("calcineurin_inhibitor", "tacrolimus"),
                                      medication("vitamin_k_antagonist", "warfarin")],
                         labs=[lab("pth", 1514, days_ago(5))])
    ids = [f.factor.id for f in assess(record, knowledge, NOW).firing]
    assert ids == ["vitamin_k_antagonist", "high_pth", "calcineurin_inhibitor"]


def test_known_calciphylaxis_is_reported_for_severity(knowledge):
    record = on_dialysis(conditions=[condition("calciphylaxis", "237900002")],
                         medications=[medication("vitamin_k_antagonist", "warfarin")])
    result = assess(record, knowledge, NOW)
    assert result.known_calciphylaxis is not None and result.on_culprit_drug


def test_resolved_calciphylaxis_is_not_current(knowledge):
    record = on_dialysis(conditions=[condition("calciphylaxis", status="resolved")])
    assert assess(record, knowledge, NOW).known_calciphylaxis is None


def test_assessment_reads_no_clock(knowledge):
    record = PatientRecord("p1", procedures=[dialysis(datetime(2020, 1, 20, tzinfo=UTC))],
                           labs=[lab("pth", 1514, datetime(2020, 1, 1, tzinfo=UTC))])
    assert "high_pth" in factor_ids(assess(record, knowledge, datetime(2020, 2, 1, tzinfo=UTC)))
    assert not assess(record, knowledge, NOW).in_scope


# --- bounds, other calcium kinds, doses given, suspicion --------------------------------------
@pytest.mark.parametrize("comparator,value,fires", [
    (">", 585, True),  # > 585 is above 585
    (">=", 585, False),  # could be exactly 585
    (">=", 586, True),
    ("<", 2000, False), ("<=", 2000, False),  # an upper bound is never high
    (None, 586, True), (None, 585, False),
])
def test_a_bound_counts_as_high_only_when_it_is_above_the_threshold(knowledge, comparator,
                                                                     value, fires):
    result = assess(on_dialysis(labs=[lab("pth", value, days_ago(5), comparator=comparator)]),
                    knowledge, NOW)
    assert ("high_pth" in factor_ids(result)) is fires


@pytest.mark.parametrize("comparator,value,low", [
    ("<", 3.5, True), ("<=", 3.5, False), ("<=", 3.4, True), (">", 2.0, False), (None, 3.4, True),
])
def test_a_bound_counts_as_low_only_when_it_is_below_the_threshold(knowledge, comparator, value,
                                                                    low):
    albumin = LabResult("Observation/alb", "albumin", "1751-7", value, comparator, str(value),
                        "g/dL", days_ago(5), "final")
    result = assess(on_dialysis(labs=[albumin]), knowledge, NOW)
    assert ("low_albumin" in factor_ids(result)) is low


@pytest.mark.parametrize("kind,value,unit,fires", [
    ("ionized_calcium", 1.33, "mmol/L", True), ("ionized_calcium", 1.32, "mmol/L", False),
    ("ionized_calcium", 5.4, "mg/dL", True), ("ionized_calcium", 5.29, "mg/dL", False),
    ("corrected_calcium", 2.55, "mmol/L", True), ("corrected_calcium", 2.54, "mmol/L", False),
    ("corrected_calcium", 10.2, "mg/dL", False), ("corrected_calcium", 10.3, "mg/dL", True),
])
def test_ionized_and_corrected_calcium_use_their_own_limits(knowledge, kind, value, unit, fires):
    canonical = value * knowledge.labs[kind].units[unit]
    result = LabResult(f"Observation/{kind}", kind, "x", canonical, None, str(value), unit,
                       days_ago(5), "final")
    assessment = assess(on_dialysis(labs=[result]), knowledge, NOW)
    assert ("hypercalcemia" in factor_ids(assessment)) is fires


def test_each_calcium_kind_is_read_on_its_own_newest_result(knowledge):
    """A normal total calcium does not hide a high ionized calcium measured the day before."""
    total = LabResult("Observation/ca", "calcium", "17861-6", 9.0, None, "9.0", "mg/dL",
                      days_ago(1), "final")
    ionized = LabResult("Observation/ica", "ionized_calcium", "1994-3", 1.45, None, "1.45",
                        "mmol/L", days_ago(2), "final")
    finding = next(f for f in assess(on_dialysis(labs=[total, ionized]), knowledge,
                                     NOW).findings if f.factor.id == "hypercalcemia")
    assert [e.lab.lab for e in finding.evidence] == ["ionized_calcium"]


def given(on: datetime) -> Medication:
    return Medication("MedicationAdministration/a", "paricalcitol injection", "paricalcitol",
                      "active_vitamin_d", "name", "completed", False, on, kind="administration")


@pytest.mark.parametrize("days,current", [(0, True), (29, True), (31, False)])
def test_a_dose_given_counts_as_current_use_for_30_days(knowledge, days, current):
    result = assess(on_dialysis(medications=[given(days_ago(days))]), knowledge, NOW)
    assert ("active_vitamin_d" in factor_ids(result)) is current


@pytest.mark.parametrize("certainty,critical", [
    ("confirmed", True), ("suspected", True), ("prior", False)])
def test_known_or_suspected_calciphylaxis_is_critical_but_a_past_one_is_not(knowledge, certainty,
                                                                             critical):
    record = on_dialysis(medications=[medication("vitamin_k_antagonist", "warfarin")],
                         conditions=[condition("calciphylaxis", "237900002",
                                               certainty=certainty)])
    assert (assess(record, knowledge, NOW).known_calciphylaxis is not None) is critical
