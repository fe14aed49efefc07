"""Card writing: wording from cards/, summaries under 140 characters, chart text escaped."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.cards.writer import CARDS_DIR, CardTemplates, CardWriter, TemplateError
from cds_service.clinical.assessment import assess
from cds_service.clinical.record import (
    ConditionEntry,
    LabResult,
    Medication,
    PatientRecord,
    ProcedureEntry,
)

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def in_scope_record(*medications: Medication) -> PatientRecord:
    return PatientRecord(
        "p1", sex="female",
        conditions=[ConditionEntry("Condition/c", ("esrd_on_dialysis",), ("N18.6",), "ESRD",
                                   "active", "confirmed", None, False)],
        procedures=[ProcedureEntry("Procedure/hd", "dialysis", "302497006", "Hemodialysis",
                                   "completed", NOW - timedelta(days=2))],
        medications=list(medications))


def med(cls: str, ingredient: str, name: str | None = None, ref: str = "MedicationRequest/m",
        draft: bool = False) -> Medication:
    return Medication(ref, name or ingredient, ingredient, cls, "name",
                      "draft" if draft else "active", draft, NOW - timedelta(days=30))


@pytest.fixture(scope="module")
def writer(knowledge):
    return CardWriter(knowledge, CardTemplates.load())


def test_long_summaries_list_fewer_items_and_say_how_many_more(knowledge, writer):
    meds = [med("vitamin_k_antagonist", "warfarin"), med("calcium_binder", "calcium acetate"),
            med("active_vitamin_d", "calcitriol"), med("systemic_corticosteroid",
                                                       "methylprednisolone"),
            med("calcineurin_inhibitor", "tacrolimus"), med("active_vitamin_d", "paricalcitol"),
            med("calcium_binder", "calcium carbonate"), med("calcineurin_inhibitor",
                                                           "cyclosporine")]
    [issued] = writer.patient_view(assess(in_scope_record(*meds), knowledge, NOW))
    summary = issued.card["summary"]
    assert len(summary) < 140
    assert summary.startswith("Calciphylaxis risk on dialysis: warfarin")
    assert summary.endswith("more")


def test_chart_text_cannot_inject_markdown(knowledge, writer):
    evil = med("vitamin_k_antagonist", "warfarin",
               name="warfarin **STOP NOW** [click](http://evil.example) <script>")
    [issued] = writer.patient_view(assess(in_scope_record(evil), knowledge, NOW))
    detail = issued.card["detail"]
    # "<" is escaped where it could open an HTML tag; ">" alone opens nothing mid-line.
    assert r"\*\*STOP NOW\*\*" in detail and r"\[click\]" in detail and r"\<script>" in detail
    assert "**Modifiable risk factors**" in detail  # the template's own Markdown is intact


def test_a_bound_reported_by_the_lab_reads_as_sent(knowledge, writer):
    """">2500 pg/mL" and "<10 pg/mL" are shown as the lab wrote them, not escaped."""
    record = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    record.labs.append(LabResult("Observation/p", "pth", "2731-8", 2500.0, ">", ">2500",
                                 "pg/mL", NOW - timedelta(days=3), "final"))
    [issued] = writer.patient_view(assess(record, knowledge, NOW))
    assert "PTH >2500 pg/mL" in issued.card["detail"]
    assert "PTH >2500 pg/mL" in issued.card["summary"]


def test_critical_card_leads_with_the_drugs_to_stop(knowledge, writer):
    record = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    record.conditions.append(ConditionEntry("Condition/cux", ("calciphylaxis",), ("237900002",),
                                            "Calciphylaxis", "active", "confirmed", None, False))
    [issued] = writer.patient_view(assess(record, knowledge, NOW))
    assert issued.card["indicator"] == "critical"
    assert issued.card["summary"].startswith("Calciphylaxis diagnosed; still on warfarin")
    assert issued.rules == ("critical", "vitamin_k_antagonist", "known_calciphylaxis")


def test_cards_cite_their_sources_and_the_scope_note(knowledge, writer):
    [issued] = writer.patient_view(assess(in_scope_record(med("vitamin_k_antagonist",
                                                              "warfarin")), knowledge, NOW))
    detail = issued.card["detail"]
    assert "KDIGO 2017" in detail and "N Engl J Med 2018" in detail and "KDOQI 2003" in detail
    assert "maintenance dialysis" in detail
    # The transplant note only where it applies: this patient was never transplanted.
    assert "transplant" not in detail.lower()


def test_the_transplant_note_is_shown_to_a_transplanted_patient(knowledge, writer):
    record = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    record.procedures.append(ProcedureEntry("Procedure/tx", "kidney_transplant", "70536003",
                                            "Transplant of kidney", "completed",
                                            NOW - timedelta(days=900)))
    [issued] = writer.patient_view(assess(record, knowledge, NOW))
    assert "after a kidney transplant" in issued.card["detail"]
    assert issued.card["source"]["topic"]["code"] == "calciphylaxis-risk"


def test_draft_without_an_id_gets_a_card_but_no_replace_suggestion(knowledge, writer):
    draft = med("calcium_binder", "calcium acetate", ref="MedicationRequest", draft=True)
    [issued] = writer.order_cards(assess(in_scope_record(draft), knowledge, NOW), "p1")
    assert "suggestions" not in issued.card and "selectionBehavior" not in issued.card


def test_a_clinician_edit_to_the_wording_takes_effect(knowledge, tmp_path):
    shutil.copy(CARDS_DIR / "cards.toml", tmp_path / "cards.toml")
    text = (tmp_path / "cards.toml").read_text()
    (tmp_path / "cards.toml").write_text(text.replace(
        'summary = "Calciphylaxis risk on dialysis: ', 'summary = "CUA risk (dialysis): ', 1))
    edited = CardWriter(knowledge, CardTemplates.load(tmp_path))
    [issued] = edited.patient_view(assess(in_scope_record(med("vitamin_k_antagonist",
                                                              "warfarin")), knowledge, NOW))
    assert issued.card["summary"] == "CUA risk (dialysis): warfarin"


def test_a_missing_template_fails_at_start(knowledge, tmp_path):
    text = (CARDS_DIR / "cards.toml").read_text()
    (tmp_path / "cards.toml").write_text(text.replace("[order.critical]", "[order.criticalx]"))
    with pytest.raises(TemplateError):
        CardWriter(knowledge, CardTemplates.load(tmp_path))


def test_an_unresolvable_medication_order_is_said_on_the_card(knowledge, writer):
    from cds_service.clinical.record import UNRESOLVED_MEDICATION, Unreadable

    record = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    record.unreadable.append(Unreadable("MedicationRequest", UNRESOLVED_MEDICATION, "x"))
    [issued] = writer.patient_view(assess(record, knowledge, NOW))
    assert "1 current medication order could not be read" in issued.card["detail"]


def test_a_critical_summary_names_only_the_drugs_to_stop(knowledge, writer):
    from cds_service.clinical.record import LabResult

    record = in_scope_record(med("calcium_binder", "calcium acetate"))
    record.labs.append(LabResult("Observation/p", "pth", "2731-8", 900.0, None, "900", "pg/mL",
                                 NOW - timedelta(days=3), "final"))
    record.conditions.append(ConditionEntry("Condition/cux", ("calciphylaxis",), ("237900002",),
                                            "Calciphylaxis", "active", "confirmed", None, False))
    [issued] = writer.patient_view(assess(record, knowledge, NOW))
    assert issued.card["summary"] == "Calciphylaxis diagnosed; still on calcium acetate"
    assert "PTH 900 pg/mL" in issued.card["detail"]


def test_a_diagnosis_without_text_is_named_by_its_knowledge_label(knowledge, writer):
    record = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    record.procedures.clear()
    record.conditions[0] = ConditionEntry("Condition/c", ("esrd_on_dialysis",), ("N18.6",), "",
                                          "active", "confirmed", None, False)
    [issued] = writer.patient_view(assess(record, knowledge, NOW))
    assert "On maintenance dialysis: end-stage renal disease." in issued.card["detail"]
    assert "N18.6" not in issued.card["detail"]


def test_substitute_orders_carry_rxnorm_clinical_drug_and_atc(knowledge, writer):
    record = in_scope_record(med("calcium_binder", "calcium acetate",
                                 ref="MedicationRequest/d1", draft=True))
    [issued] = writer.order_cards(assess(record, knowledge, NOW), "p1")
    created = {s["label"]: next(a for a in s["actions"] if a["type"] == "create")["resource"]
               for s in issued.card["suggestions"]}
    sevelamer = next(r for label, r in created.items() if "sevelamer" in label)
    codes = {(c["system"], c["code"]) for c in sevelamer["medicationCodeableConcept"]["coding"]}
    assert codes == {("http://www.nlm.nih.gov/research/umls/rxnorm", "749206"),
                     ("http://www.whocc.no/atc", "V03AE02")}


def test_suspected_calciphylaxis_is_worded_suspected(knowledge, writer):
    record = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    record.conditions.append(ConditionEntry(
        "Condition/cua", ("calciphylaxis",), ("237900002",), "Possible calciphylaxis", "active",
        "provisional", NOW - timedelta(days=3), False, certainty="suspected"))
    [issued] = writer.patient_view(assess(record, knowledge, NOW))
    assert issued.card["indicator"] == "critical"
    assert issued.card["summary"].startswith("Suspected calciphylaxis")
    assert "suspected" in issued.card["detail"] and "already diagnosed" not in issued.card[
        "detail"]


def test_a_dose_given_is_worded_as_given_with_its_date(knowledge, writer):
    dose = Medication("MedicationAdministration/a", "Paricalcitol 5 mcg/mL injection",
                      "paricalcitol", "active_vitamin_d", "name", "completed", False,
                      NOW - timedelta(days=2), kind="administration")
    [issued] = writer.patient_view(assess(in_scope_record(dose), knowledge, NOW))
    assert "Paricalcitol 5 mcg/mL injection (given 2026-11-18)" in issued.card["detail"]
