"""What the words around "calciphylaxis" say: a negation counts only when it governs the term."""

from __future__ import annotations

import pytest

ICD = "http://hl7.org/fhir/sid/icd-10-cm"


def certainty(knowledge, text: str) -> str | None:
    hit = knowledge.conditions["calciphylaxis"].match(((ICD, "E83.59", ""),), text)
    return hit.certainty if hit else None


@pytest.mark.parametrize("text", [
    "Calciphylaxis",
    "Calciphylaxis of left thigh, not ulcerated",
    "Calciphylaxis without secondary infection",
    "Calciphylaxis, no eschar",
    "No eschar; calciphylaxis of the abdomen",
    "Calcific uremic arteriolopathy, non-ulcerated plaques",
    "Calcifilaxis de muslo izquierdo",
    "Non-healing ulcer: calciphylaxis confirmed on biopsy",
])
def test_negated_features_leave_the_diagnosis_standing(knowledge, text):
    assert certainty(knowledge, text) == "confirmed"


@pytest.mark.parametrize("text", [
    "No calciphylaxis", "No evidence of calciphylaxis", "Negative for calciphylaxis",
    "Calciphylaxis ruled out", "Calciphylaxis was excluded by biopsy", "Ruled out calciphylaxis",
    "Not consistent with calciphylaxis", "Calciphylaxis: ruled out",
])
def test_a_negation_of_the_term_itself_removes_the_diagnosis(knowledge, text):
    assert certainty(knowledge, text) is None


@pytest.mark.parametrize("text", [
    "At risk for calciphylaxis", "Calciphylaxis risk", "Screening for calciphylaxis",
])
def test_risk_and_screening_are_not_a_diagnosis(knowledge, text):
    assert certainty(knowledge, text) is None


@pytest.mark.parametrize("text", [
    "Suspected calciphylaxis", "Possible calciphylaxis, abdominal wall", "Probable calciphylaxis",
    "r/o calciphylaxis", "Rule out calciphylaxis", "?calciphylaxis", "Calciphylaxis suspected",
    "Vasculitis vs calciphylaxis", "Calciphylaxis?",
])
def test_suspected_calciphylaxis_is_suspected(knowledge, text):
    assert certainty(knowledge, text) == "suspected"


@pytest.mark.parametrize("text", ["History of calciphylaxis", "Calciphylaxis, resolved",
                                  "h/o calciphylaxis (2019)"])
def test_history_of_calciphylaxis_is_a_prior_episode(knowledge, text):
    assert certainty(knowledge, text) == "prior"


def test_e83_59_needs_the_words_but_snomed_needs_none(knowledge):
    concept = knowledge.conditions["calciphylaxis"]
    assert concept.match(((ICD, "E83.59", ""),), "Hypercalcemia") is None
    assert concept.match((("http://snomed.info/sct", "237900002", ""),), "").certainty == (
        "confirmed")
    # A code does not outweigh words that deny it.
    assert concept.match((("http://snomed.info/sct", "237900002", ""),),
                         "Calciphylaxis ruled out") is None
