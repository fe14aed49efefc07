"""The alert burden of the tiers: warning and info rates over a modelled dialysis population.

    .venv/bin/python bench/alert_burden.py                 # make alert-burden (seconds)
    .venv/bin/python bench/alert_burden.py --patients 100000 --seed 7

Each modelled haemodialysis patient draws every factor independently at its published
prevalence (the table below; clinical.md "Clinical policy after review"), becomes a
PatientRecord, and is assessed by the service's own assessment, so a change to the pairings in
knowledge.toml shows its burden here at once. Printed: the share of patients per tier, per
warning pairing, and, for comparison, what the rule "any two modifiable factors" would give.
A model, not data: independence of factors is assumed, prevalences are rounded.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cds_service.clinical.assessment import assess  # noqa: E402
from cds_service.clinical.record import (  # noqa: E402
    ConditionEntry,
    LabResult,
    Medication,
    PatientRecord,
    ProcedureEntry,
)
from cds_service.knowledge import load_knowledge  # noqa: E402

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
# Prevalence on maintenance haemodialysis (rounded; clinical.md cites DOPPS for binders, active
# vitamin D and phosphate; the rest are modelling assumptions of the same order as DOPPS reports).
PREVALENCE = {
    "calcium_binder": 0.55,
    "active_vitamin_d": 0.65,
    "phosphate_high": 0.40,  # > 5.5 mg/dL
    "pth_high": 0.20,  # > 9 x ULN (585 pg/mL)
    "pth_low": 0.15,  # < 2 x ULN (130 pg/mL)
    "calcium_high": 0.05,  # > 10.2 mg/dL
    "vitamin_k_antagonist": 0.05,
    "systemic_corticosteroid": 0.04,
    "calcineurin_inhibitor": 0.02,
    "albumin_low": 0.25,
    "prior_calciphylaxis": 0.005,
    "new_skin_lesion": 0.01,
}
DRUGS = {"calcium_binder": "calcium acetate", "active_vitamin_d": "calcitriol",
         "vitamin_k_antagonist": "warfarin", "systemic_corticosteroid": "prednisone",
         "calcineurin_inhibitor": "tacrolimus"}


def _lab(kind: str, value: float, unit: str) -> LabResult:
    return LabResult(f"Observation/{kind}", kind, "x", value, None, str(value), unit,
                     NOW - timedelta(days=10), "final", reference_high=65.0 if kind == "pth"
                     else None)


def modelled_patient(rng: random.Random, n: int) -> PatientRecord:
    has = {k: rng.random() < p for k, p in PREVALENCE.items()}
    if has["pth_high"] and has["pth_low"]:
        has["pth_low"] = False
    record = PatientRecord(f"m{n}", sex="female" if rng.random() < 0.4 else "male")
    record.conditions.append(ConditionEntry("Condition/esrd", ("esrd_on_dialysis",), ("N18.6",),
                                            "ESRD", "active", "confirmed", None, False))
    record.procedures.append(ProcedureEntry("Procedure/hd", "dialysis", "302497006",
                                            "Hemodialysis", "completed", NOW - timedelta(days=2)))
    for factor, ingredient in DRUGS.items():
        if has[factor]:
            record.medications.append(Medication(
                f"MedicationRequest/{factor}", ingredient, ingredient, factor, "name", "active",
                False, NOW - timedelta(days=60)))
    pth = 900.0 if has["pth_high"] else 100.0 if has["pth_low"] else 300.0
    record.labs += [_lab("pth", pth, "pg/mL"),
                    _lab("phosphate", 6.5 if has["phosphate_high"] else 4.5, "mg/dL"),
                    _lab("calcium", 10.8 if has["calcium_high"] else 9.2, "mg/dL"),
                    _lab("albumin", 3.2 if has["albumin_low"] else 3.9, "g/dL")]
    if has["prior_calciphylaxis"]:
        record.conditions.append(ConditionEntry(
            "Condition/cua", ("calciphylaxis",), ("237900002",), "Calciphylaxis", "resolved",
            "confirmed", NOW - timedelta(days=900), True))
    if has["new_skin_lesion"]:
        record.conditions.append(ConditionEntry(
            "Condition/ulcer", ("calciphylaxis_like_lesion",), ("L97.111",), "Thigh ulcer",
            "active", "confirmed", NOW - timedelta(days=10), False))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    knowledge = load_knowledge()
    rng = random.Random(args.seed)
    tiers: Counter = Counter()
    pairings: Counter = Counter()
    two_or_more = 0
    for n in range(args.patients):
        result = assess(modelled_patient(rng, n), knowledge, NOW)
        tiers[result.tier or "none"] += 1
        pairings.update(p.id for p in result.pairings)
        two_or_more += len(result.firing) >= 2
    total = args.patients
    print(f"Modelled haemodialysis population: {total:,} patients (seed {args.seed}); "
          f"knowledge {knowledge.version}")
    for name in ("critical", "warning", "info", "none"):
        print(f"  {name:<9}{tiers[name] / total:7.1%}")
    print("  warnings by pairing (a patient may hold several):")
    for pairing in knowledge.warnings:
        print(f"    {pairing.id:<55}{pairings[pairing.id] / total:7.1%}")
    print(f"  for comparison, 'any two modifiable factors' would warn on {two_or_more / total:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
