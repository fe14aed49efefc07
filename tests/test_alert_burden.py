"""The alert-burden model runs the real assessment over modelled patients."""

from __future__ import annotations

import random
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import alert_burden  # noqa: E402

from cds_service.clinical.assessment import assess  # noqa: E402


def test_the_model_tiers_patients_as_the_policy_says(knowledge):
    rng = random.Random(1)
    seen = set()
    for n in range(3000):
        record = alert_burden.modelled_patient(rng, n)
        result = assess(record, knowledge, alert_burden.NOW)
        classes = {m.medicine_class for m in record.medications}
        if "vitamin_k_antagonist" in classes:
            assert result.tier == "warning"
            seen.add("vka")
        if classes == {"calcium_binder"} and result.tier == "info":
            seen.add("binder info")
        assert result.tier in ("warning", "info", None)
    assert seen == {"vka", "binder info"}


def test_the_script_prints_every_tier_and_the_comparison(capsys):
    assert alert_burden.main(["--patients", "2000", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for words in ("warning", "info", "none", "any two modifiable factors"):
        assert words in out
    warn = float(out.split("warning")[1].split("%")[0])
    two = float(out.split("would warn on ")[1].split("%")[0])
    assert warn < two  # the pairings warn on fewer patients than "any two factors"
