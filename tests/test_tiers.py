"""The tiers of clinical.md "Clinical policy after review": critical, warning for actionable
pairings only, info for the rest; and the gates that keep suggestions safe."""

from __future__ import annotations

import pytest
from test_assessment import NOW, calcium, condition, days_ago, lab, medication, on_dialysis

from cds_service.clinical.assessment import assess
from cds_service.clinical.record import LabResult, PatientRecord

WARFARIN = ("vitamin_k_antagonist", "warfarin")
BINDER = ("calcium_binder", "calcium acetate")
VITAMIN_D = ("active_vitamin_d", "calcitriol")
STEROID = ("systemic_corticosteroid", "prednisone")
CNI = ("calcineurin_inhibitor", "tacrolimus")


def drug(kind, *, draft=False, status="active", n=1):
    med = medication(*kind, draft=draft, ref=f"MedicationRequest/{kind[0]}-{n}")
    if status != "active":
        from dataclasses import replace

        med = replace(med, status=status)
    return med


def phosphate(value: float) -> LabResult:
    return LabResult("Observation/p", "phosphate", "2777-1", value, None, str(value), "mg/dL",
                     days_ago(5), "final")


def pth(value: float) -> LabResult:
    return lab("pth", value, days_ago(5), high=65)


@pytest.fixture()
def tier(knowledge):
    """(tier, ids of the warnings that hold) of an in-scope patient."""

    def assessed(*meds, labs=(), conditions=()):
        result = assess(on_dialysis(medications=list(meds), labs=list(labs),
                                    conditions=list(conditions)), knowledge, NOW)
        return result.tier, {p.id for p in result.pairings}

    return assessed


@pytest.mark.parametrize("meds,labs,expected", [
    ([WARFARIN], [], "warning"),  # a vitamin K antagonist alone
    ([BINDER], [], "info"),  # a binder alone: info
    ([BINDER], [phosphate(6.5)], "info"),  # its indication: still info
    ([BINDER], [pth(1000)], "warning"),  # PTH > 9 x ULN
    ([BINDER], [pth(100)], "warning"),  # PTH < 2 x ULN
    ([BINDER], [calcium(10.8)], "warning"),
    ([VITAMIN_D], [pth(1000)], "info"),  # its indication
    ([VITAMIN_D], [pth(100)], "warning"),  # over-suppression
    ([VITAMIN_D], [calcium(10.8)], "warning"),
    ([VITAMIN_D], [phosphate(6.5)], "info"),
    ([STEROID], [], "info"),
    ([STEROID], [phosphate(6.5)], "warning"),  # with another modifiable factor
    ([CNI, BINDER], [], "warning"),
    ([], [phosphate(6.5)], "info"),
    ([], [pth(1000)], "info"),
    ([], [pth(100)], None),  # low PTH alone is context, not a card (PTH was measured)
    ([BINDER, VITAMIN_D], [phosphate(6.5), pth(800)], "warning"),  # binder with PTH > 9 x ULN
    ([BINDER, VITAMIN_D], [phosphate(6.5), pth(400)], "info"),
])
def test_tier_of_each_pairing(tier, meds, labs, expected):
    assert tier(*(drug(m) for m in meds), labs=labs)[0] == expected


def test_low_albumin_alone_gets_no_card(tier):
    albumin = LabResult("Observation/a", "albumin", "1751-7", 3.0, None, "3.0", "g/dL",
                        days_ago(5), "final")
    assert tier(labs=[albumin, pth(300)])[0] is None


def test_any_culprit_after_a_previous_episode_warns(tier):
    prior = condition("calciphylaxis", "237900002", status="resolved")
    assert tier(drug(VITAMIN_D), conditions=[prior]) == (
        "warning", {"culprit_after_prior_episode"})
    worded = condition("calciphylaxis", "E83.59", certainty="prior")
    assert tier(drug(BINDER), conditions=[worded])[0] == "warning"
    # A previous episode with no culprit drug: nothing to act on.
    assert tier(labs=[pth(300)], conditions=[prior])[0] is None


@pytest.mark.parametrize("onset_days,culprit,expected", [
    (10, True, "warning"), (89, True, "warning"), (120, True, "info"), (10, False, None),
])
def test_a_new_skin_lesion_with_a_culprit_says_consider_calciphylaxis(tier, onset_days, culprit,
                                                                       expected):
    lesion = condition("calciphylaxis_like_lesion", "L97.111", onset_days=onset_days)
    meds = [drug(BINDER)] if culprit else []
    result_tier, pairings = tier(*meds, labs=[pth(300)], conditions=[lesion])
    assert result_tier == expected
    assert ("consider_calciphylaxis" in pairings) is (expected == "warning")


def test_known_calciphylaxis_with_a_culprit_is_critical_even_off_dialysis(knowledge):
    record = PatientRecord("p1", medications=[drug(WARFARIN)],
                           conditions=[condition("calciphylaxis", "237900002", onset_days=5)])
    result = assess(record, knowledge, NOW)
    assert not result.in_scope and result.tier == "critical"
    # The same patient without the diagnosis: out of scope, no card at all.
    assert assess(PatientRecord("p1", medications=[drug(WARFARIN)]), knowledge, NOW).tier is None


def test_a_culprit_on_hold_still_makes_known_calciphylaxis_critical(knowledge):
    record = on_dialysis(medications=[drug(WARFARIN, status="on-hold")],
                         conditions=[condition("calciphylaxis", "237900002", onset_days=5)])
    assert assess(record, knowledge, NOW).tier == "critical"


def test_a_deceased_patient_gets_nothing_even_with_calciphylaxis(knowledge):
    record = PatientRecord("p1", medications=[drug(WARFARIN)], deceased=True,
                           conditions=[condition("calciphylaxis", "237900002", onset_days=5)])
    assert assess(record, knowledge, NOW).tier is None


def test_an_order_card_warns_only_through_warnings_the_ordered_drug_takes_part_in(knowledge):
    """Binder + PTH 1000 is a warning; a calcitriol draft beside it is info (its indication)."""
    record = on_dialysis(medications=[drug(BINDER), drug(VITAMIN_D, draft=True)],
                         labs=[pth(1000), calcium(9.2)])
    result = assess(record, knowledge, NOW)
    assert result.tier == "warning"
    [draft] = result.draft_findings
    assert (draft.tier, draft.pairings) == ("info", ())
    binder_draft = assess(on_dialysis(medications=[drug(BINDER, draft=True)],
                                      labs=[pth(1000)]), knowledge, NOW).draft_findings[0]
    assert binder_draft.tier == "warning"


def test_a_drafted_drug_counts_as_present(knowledge):
    """A steroid drafted for a patient with high phosphate: the pairing holds with the draft."""
    result = assess(on_dialysis(medications=[drug(STEROID, draft=True)],
                                labs=[phosphate(6.5)]), knowledge, NOW)
    assert result.draft_findings[0].tier == "warning"


def suggestions_for(knowledge, *meds, labs=()):
    result = assess(on_dialysis(medications=list(meds), labs=list(labs)), knowledge, NOW)
    return [(s.substitute.id, s.replaces is not None)
            for s in result.draft_findings[0].suggestions]


def test_no_binder_swap_with_low_phosphate_and_none_already_taken(knowledge):
    binder = drug(BINDER, draft=True)
    assert suggestions_for(knowledge, binder, labs=[phosphate(5.0)]) == [
        ("sevelamer_carbonate", True), ("lanthanum_carbonate", True)]
    assert suggestions_for(knowledge, binder, labs=[phosphate(2.6)]) == []
    on_sevelamer = medication("non_calcium_binder", "sevelamer carbonate",
                              ref="MedicationRequest/sev")
    assert suggestions_for(knowledge, binder, on_sevelamer, labs=[phosphate(5.0)]) == [
        ("lanthanum_carbonate", True)]


def test_advice_gates_reach_the_card(knowledge):
    from cds_service.cards.writer import CardTemplates, CardWriter

    writer = CardWriter(knowledge, CardTemplates.load())
    aps = condition("doac_contraindication", "D68.61", also=("hypercoagulable",))
    [with_aps] = writer.patient_view(assess(on_dialysis(medications=[drug(WARFARIN)],
                                                        conditions=[aps]), knowledge, NOW))
    [plain] = writer.patient_view(assess(on_dialysis(medications=[drug(WARFARIN)]),
                                         knowledge, NOW))
    assert "DOAC" in plain.card["detail"] and "DOAC" not in with_aps.card["detail"]
    assert "thrombotic risk" in with_aps.card["detail"]
    [vitamin_d] = writer.patient_view(assess(on_dialysis(medications=[drug(VITAMIN_D)],
                                                         labs=[pth(900), calcium(9.0)]),
                                             knowledge, NOW))
    assert "reduce or stop" not in vitamin_d.card["detail"].lower()
    [high_ca] = writer.patient_view(assess(on_dialysis(medications=[drug(BINDER)],
                                                       labs=[pth(300), calcium(10.9)]),
                                           knowledge, NOW))
    detail = high_ca.card["detail"]
    assert "reduce the dose of calcium acetate" in detail and "dialysate calcium" in detail
    assert "active vitamin d" not in detail.split("**What to consider**")[1].lower()
