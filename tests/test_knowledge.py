"""The knowledge files: value sets load, codes map to the right concepts and medicine classes."""

from __future__ import annotations

import pytest

from cds_service.knowledge import load_knowledge

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
SNOMED = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"


def classify(knowledge, text="", *codes):
    return knowledge.classify_medicine(tuple((s, c, "") for s, c in codes), text)


@pytest.mark.parametrize("codes,text,cls,ingredient", [
    ([(RXNORM, "855332")], "", "vitamin_k_antagonist", "warfarin"),  # VSAC warfarin SCD
    ([(RXNORM, "202421")], "", "vitamin_k_antagonist", "warfarin"),  # Coumadin BN
    ([(ATC, "B01AA07")], "", "vitamin_k_antagonist", "acenocoumarol"),
    ([], "Jantoven 5 mg", "vitamin_k_antagonist", "warfarin"),
    ([(RXNORM, "359296")], "", "calcium_binder", "calcium acetate 667 MG Oral Capsule"),
    ([(ATC, "V03AE04")], "", "calcium_binder", "calcium acetate and magnesium carbonate"),
    ([], "PhosLo gelcaps", "calcium_binder", "calcium acetate"),
    ([(RXNORM, "577317")], "", "active_vitamin_d", "paricalcitol"),
    ([(ATC, "H05BX05")], "", "active_vitamin_d", "calcifediol (extended release)"),
    ([], "Zemplar 2 mcg", "active_vitamin_d", "paricalcitol"),
    ([(RXNORM, "8640")], "", "systemic_corticosteroid", "prednisone"),
    ([(ATC, "H02AB04")], "", "systemic_corticosteroid", "glucocorticoids for systemic use"),
    ([(RXNORM, "198377")], "", "calcineurin_inhibitor", "tacrolimus 1 MG Oral Capsule"),
    ([], "Neoral 100 mg capsule", "calcineurin_inhibitor", "cyclosporine"),
])
def test_medicines_are_recognised_by_rxnorm_atc_and_name(knowledge, codes, text, cls,
                                                         ingredient):
    match = classify(knowledge, text, *codes)
    assert match.medicine_class == cls and match.excluded_because is None
    assert match.ingredient.lower().startswith(ingredient.lower().split()[0])


@pytest.mark.parametrize("codes,text", [
    ([(RXNORM, "106258")], "hydrocortisone 10 MG/ML Topical Cream"),  # PDDI exclude set
    ([], "Restasis cyclosporine 0.05% ophthalmic emulsion"),
    ([(ATC, "D11AH01")], "tacrolimus ointment"),
    ([(ATC, "D05AX03")], "calcitriol ointment"),
    ([], "fluticasone inhaler"),  # not a listed systemic steroid at all
    ([], "budesonide inhalation suspension"),
])
def test_non_systemic_products_do_not_count(knowledge, codes, text):
    match = classify(knowledge, text, *codes)
    assert match is None or match.excluded_because is not None


@pytest.mark.parametrize("text", ["cholecalciferol 1000 UNT", "ergocalciferol 50000 UNT",
                                  "sevelamer carbonate 800 MG", "lanthanum carbonate",
                                  "cinacalcet 30 mg", "apixaban 5 mg", "fludrocortisone 0.1 mg"])
def test_medicines_outside_the_risk_classes_are_not_matched(knowledge, text):
    match = classify(knowledge, text)
    # Non-calcium binders and calcimimetics are known (they gate advice) but are no risk factor.
    assert match is None or knowledge.medicines.by_id[match.medicine_class].factor is None


def test_name_matching_uses_whole_words(knowledge):
    assert classify(knowledge, "methylprednisolone 4 mg").ingredient == "methylprednisolone"
    assert classify(knowledge, "warfarinX") is None


@pytest.mark.parametrize("concept,system,code,expected", [
    ("esrd_on_dialysis", SNOMED, "46177005", True),
    ("esrd_on_dialysis", SNOMED, "714152005", True),
    ("esrd_on_dialysis", ICD, "Z99.2", True),
    ("esrd_on_dialysis", SNOMED, "236434000", False),  # untreated: in the VSAC set, excluded
    ("esrd_on_dialysis", SNOMED, "236436003", False),  # with transplant: excluded
    ("esrd_on_dialysis", ICD, "N18.5", False),  # CKD 5 not on dialysis
    ("obesity", ICD, "E66.01", True),
    ("obesity", ICD, "E66.3", False),  # overweight
    ("obesity", ICD, "Z68.41", True),
    ("obesity", ICD, "Z68.29", False),
    ("obesity", SNOMED, "162863004", False),  # BMI 25-29 overweight, excluded from VSAC set
    ("diabetes", ICD, "E11.9", True),
    ("hypercoagulable", ICD, "D68.59", True),
    ("hypercoagulable", ICD, "D68.51", False),  # factor V Leiden is not protein C/S deficiency
    ("primary_hyperparathyroidism", ICD, "E21.0", True),
    ("primary_hyperparathyroidism", ICD, "E21.1", False),  # secondary
])
def test_condition_concepts(knowledge, concept, system, code, expected):
    assert bool(knowledge.conditions[concept].match(((system, code, ""),), "")) is expected


def test_e83_59_counts_as_calciphylaxis_only_with_the_word(knowledge):
    concept = knowledge.conditions["calciphylaxis"]
    assert concept.match(((ICD, "E83.59", ""),), "Calcific uremic arteriolopathy")
    assert not concept.match(((ICD, "E83.59", ""),), "Hypercalcemia")
    assert concept.match((), "calciphylaxis, left thigh")


@pytest.mark.parametrize("system,code,expected", [
    (SNOMED, "265764009", True), (SNOMED, "71192002", True), (CPT, "90935", True),
    (CPT, "90960", True), (CPT, "90970", True), (CPT, "90971", False),
    (SNOMED, "714749008", False),  # acute CRRT is not maintenance dialysis
])
def test_dialysis_procedures(knowledge, system, code, expected):
    assert bool(knowledge.procedures["dialysis"].match(((system, code, ""),), "")) is expected


def test_thresholds_and_units_come_from_the_data_file(knowledge):
    [pth] = knowledge.factors["high_pth"].labs
    assert (pth.lab, pth.comparison, pth.uln_multiple, pth.default_uln) == (
        "pth", "above", 9.0, 65.0)
    assert knowledge.labs["pth"].units["pmol/L"] == 9.43
    assert knowledge.labs["phosphate"].units["mmol/L"] == 3.097
    assert knowledge.labs["calcium"].units["mmol/L"] == 4.008
    assert knowledge.labs["albumin"].units["g/L"] == 0.1
    assert knowledge.canonical_unit("pg/ml") == "pg/mL"


def test_an_inconsistent_knowledge_file_fails_at_start(tmp_path):
    import shutil

    from cds_service.knowledge import KNOWLEDGE_DIR, KnowledgeError

    shutil.copytree(KNOWLEDGE_DIR / "valuesets", tmp_path / "valuesets")
    text = (KNOWLEDGE_DIR / "knowledge.toml").read_text()
    (tmp_path / "knowledge.toml").write_text(text.replace('lab = "pth"', 'lab = "ptx"'))
    with pytest.raises(KnowledgeError):
        load_knowledge(tmp_path)


@pytest.mark.parametrize("codes,text", [
    ([(RXNORM, "313979")], ""),  # fludrocortisone 0.1 MG tablet, in the VSAC oral set
    ([], "fludrocortisone acetate 0.1 mg tablet"),
    ([(RXNORM, "854181")], ""),  # Ozurdex intravitreal implant, in the PDDI set
    ([(RXNORM, "1291082")], ""),  # a hydrocortisone suppository, in the PDDI set
    ([], "Cortenema 100 mg/60 mL"),
    ([], "Domeboro powder for topical solution (aluminum sulfate / calcium acetate)"),
])
def test_products_that_carry_no_risk_are_not_counted_even_by_code_alone(knowledge, codes, text):
    match = classify(knowledge, text, *codes)
    assert match is None or match.excluded_because is not None


@pytest.mark.parametrize("text,ingredient", [
    ("Solu-Medrol 125 mg injection", "methylprednisolone"), ("One Alpha 1 mcg", "alfacalcidol"),
    ("betamethasone 4 mg/mL injection", "betamethasone"),
])
def test_brands_and_ingredients_written_with_spaces_or_hyphens(knowledge, text, ingredient):
    assert classify(knowledge, text).ingredient == ingredient


@pytest.mark.parametrize("code,text,counts", [
    ("E83.59", "Calciphylaxis of lower legs", True),
    ("E83.59", "calciphylaxis ruled out", False),
    ("281647001", "At risk for calciphylaxis", False),
    ("X", "No calciphylaxis on biopsy", False),
    ("X", "Suspected calciphylaxis, left thigh", True),
])
def test_calciphylaxis_text_that_denies_it_does_not_count(knowledge, code, text, counts):
    system = ICD if code.startswith("E") else SNOMED
    assert bool(knowledge.conditions["calciphylaxis"].match(((system, code, ""),), text)) is counts


@pytest.mark.parametrize("system,code", [
    (SNOMED, "233590002"), (SNOMED, "233585000"), (CPT, "90997"), (SNOMED, "10848006"),
    (SNOMED, "439278006"), (SNOMED, "427053002"),
])
def test_acute_and_non_session_procedures_are_not_maintenance_dialysis(knowledge, system, code):
    assert not knowledge.procedures["dialysis"].match(((system, code, ""),), "")


def test_worse_at_limits_must_lead_away_from_the_first(tmp_path):
    """A band that went back towards normal would make a better result count as "worse"."""
    import shutil

    from cds_service.knowledge import KNOWLEDGE_DIR, KnowledgeError

    shutil.copytree(KNOWLEDGE_DIR / "valuesets", tmp_path / "valuesets")
    text = (KNOWLEDGE_DIR / "knowledge.toml").read_text()
    (tmp_path / "knowledge.toml").write_text(text.replace("worse_at = [15.0, 25.0]",
                                                          "worse_at = [25.0, 15.0]"))
    with pytest.raises(KnowledgeError, match="worse_at"):
        load_knowledge(tmp_path)
    (tmp_path / "knowledge.toml").write_text(text.replace("worse_at = [1.0]",
                                                          "worse_at = [3.0]"))
    with pytest.raises(KnowledgeError, match="worse_at"):
        load_knowledge(tmp_path)


def test_a_result_band_counts_the_further_limits_passed(knowledge):
    [pth_high] = knowledge.factors["high_pth"].labs
    assert [pth_high.band(v, 65.0) for v in (600, 1000, 1700)] == [0, 1, 2]
    [pth_low] = knowledge.factors["low_pth"].labs
    assert [pth_low.band(v, 65.0) for v in (100, 50)] == [0, 1]
