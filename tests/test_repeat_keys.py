"""What a card is about (clinical/repeat_keys.py): the keys an override answers. A later card
is new exactly when it has a key the overridden one did not."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from test_cards import NOW, in_scope_record, med

from cds_service.clinical.assessment import assess
from cds_service.clinical.record import ConditionEntry, LabResult
from cds_service.clinical.repeat_keys import card_keys


def pth(value: float, days_ago: int = 10) -> LabResult:
    return LabResult(f"Observation/pth-{value}", "pth", "2731-8", value, None, str(value),
                     "pg/mL", NOW - timedelta(days=days_ago), "final")


def keys_of(knowledge, record) -> frozenset[str]:
    assessment = assess(record, knowledge, NOW)
    return card_keys(assessment.tier, assessment.findings, assessment.pairings)


@pytest.fixture()
def binder_with_high_pth():
    record = in_scope_record(med("calcium_binder", "calcium acetate"))
    record.labs.append(pth(1200))  # 18 x the default upper limit of 65
    return record


def test_the_same_chart_gives_the_same_keys(knowledge, binder_with_high_pth):
    assert keys_of(knowledge, binder_with_high_pth) == keys_of(knowledge, binder_with_high_pth)


def test_a_new_culprit_drug_is_new(knowledge, binder_with_high_pth):
    before = keys_of(knowledge, binder_with_high_pth)
    binder_with_high_pth.medications.append(med("active_vitamin_d", "calcitriol",
                                                ref="MedicationRequest/d"))
    after = keys_of(knowledge, binder_with_high_pth)
    assert not after <= before
    assert before <= after


def test_a_drug_put_on_hold_is_not_new_but_one_back_from_hold_is(knowledge):
    taken = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    held = in_scope_record(dataclasses.replace(med("vitamin_k_antagonist", "warfarin"),
                                               status="on-hold"))
    assert keys_of(knowledge, held) <= keys_of(knowledge, taken)
    assert not keys_of(knowledge, taken) <= keys_of(knowledge, held)


def test_a_result_past_one_more_limit_is_new_a_better_one_is_not(knowledge,
                                                                  binder_with_high_pth):
    at_18 = keys_of(knowledge, binder_with_high_pth)
    binder_with_high_pth.labs[:] = [pth(1700, days_ago=1)]  # 26 x: past 25 x
    at_26 = keys_of(knowledge, binder_with_high_pth)
    binder_with_high_pth.labs[:] = [pth(980, days_ago=1)]  # 15.1 x: the same band as 18 x
    at_15 = keys_of(knowledge, binder_with_high_pth)
    assert not at_26 <= at_18
    assert at_15 == at_18
    assert at_18 <= at_26


def test_low_pth_falling_below_the_upper_limit_is_new(knowledge):
    record = in_scope_record(med("calcium_binder", "calcium acetate"))
    record.labs.append(pth(100))  # below 2 x 65, above 65
    above_uln = keys_of(knowledge, record)
    record.labs[:] = [pth(50, days_ago=1)]
    assert not keys_of(knowledge, record) <= above_uln


def test_context_alone_is_not_new_but_a_new_lesion_is(knowledge):
    record = in_scope_record(med("vitamin_k_antagonist", "warfarin"))
    before = keys_of(knowledge, record)
    record.conditions.append(ConditionEntry("Condition/dm", ("diabetes",), ("44054006",),
                                            "Diabetes", "active", "confirmed", None, False))
    assert keys_of(knowledge, record) == before
    record.conditions.append(ConditionEntry(
        "Condition/ulcer", ("calciphylaxis_like_lesion",), ("ulcer",), "Ulcer of thigh",
        "active", "confirmed", NOW - timedelta(days=3), False))
    after = keys_of(knowledge, record)
    assert not after <= before


def test_a_higher_tier_is_new(knowledge):
    info = in_scope_record(med("calcium_binder", "calcium acetate"))
    warning = in_scope_record(med("calcium_binder", "calcium acetate"))
    warning.labs.append(pth(1200))
    assert assess(info, knowledge, NOW).tier == "info"
    assert not keys_of(knowledge, warning) <= keys_of(knowledge, info)
    assert "tier>=2" in keys_of(knowledge, warning) - keys_of(knowledge, info)
