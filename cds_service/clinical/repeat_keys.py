"""What a card is about, as a set of keys: what a clinician answered when overriding it.

A later card whose keys are all among those of a card the clinician overrode says nothing new
(override quieting, feedback/quieting.py). Anything new adds a key: a culprit drug not taken
before (or one back from hold), a modifiable factor not present before, a result past one more
of its factor's `worse_at` limits, a new lesion or previous episode, a higher tier. Fewer
factors, a drug put on hold or a better result add none.

Keys name drugs and bands, never values; the store keeps only keyed hashes of them.
"""

from __future__ import annotations

from cds_service.clinical.assessment import CRITICAL, INFO, WARNING, Evidence, Finding
from cds_service.clinical.record import Medication
from cds_service.knowledge.model import Pairing

TIER_RANK = {INFO: 1, WARNING: 2, CRITICAL: 3}


def card_keys(tier: str, findings: list[Finding], pairings: tuple[Pairing, ...] = (),
              drafted: Medication | None = None) -> frozenset[str]:
    """The keys of a card of `tier` naming `findings` (and a drafted drug, for order cards)."""
    keys = {f"tier>={rank}" for rank in range(1, TIER_RANK[tier] + 1)}
    paired = {factor for p in pairings for factor in (*p.all, *p.any)}
    for finding in findings:
        factor = finding.factor
        # Context (diabetes, female sex) does not make a card new; what can be acted on does,
        # and so does whatever makes a warning hold (a new lesion, a previous episode).
        if factor.modifiable != "yes" and not factor.culprit_drug and factor.id not in paired:
            continue
        keys.add(f"factor:{factor.id}")
        for evidence in finding.evidence:
            keys |= _evidence_keys(factor.id, evidence)
    if drafted is not None:
        keys |= _drug_keys(drafted)
    return frozenset(keys)


def _evidence_keys(factor: str, evidence: Evidence) -> set[str]:
    if evidence.medication is not None:
        return _drug_keys(evidence.medication)
    if evidence.lab is not None and evidence.criterion is not None \
            and evidence.lab.value is not None:
        band = evidence.criterion.band(evidence.lab.value, evidence.uln)
        # Band 2 carries the keys of bands 0 and 1: a better result is covered by a worse one.
        return {f"lab:{factor}:{evidence.lab.lab}>={b}" for b in range(band + 1)}
    if evidence.condition is not None:
        condition = evidence.condition
        when = condition.onset or condition.recorded
        # Another lesion (another onset) is new; the same one read again is not.
        return {f"condition:{factor}:{when.date().isoformat() if when else condition.reference}"}
    return set()


def _drug_keys(medication: Medication) -> set[str]:
    # Taken covers on hold: a drug put on hold adds nothing; one back from hold does.
    keys = {f"drug:{medication.ingredient}"}
    if medication.status != "on-hold":
        keys.add(f"drug-taken:{medication.ingredient}")
    return keys
