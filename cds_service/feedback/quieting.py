"""Override quieting: the recall of what a clinician already answered for a patient.

A patient-view card overridden for a patient is not shown again for `override_quiet_days` while
nothing new appears (cdshooks/engine.py decides, with clinical/repeat_keys.py); order cards
always show and say when the risk was last acknowledged. This module reads the overrides: the
patient's keyed hash, the cards shown and the feedback on them, all in the card store, so it
holds across restarts and replicas.

It is on the request path, so it never costs a call more than its deadline and never hides a
card by failure: a store that does not answer in time (or is known down) means no recall, and
every card is shown.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from prometheus_client import Counter

from cds_service.cdshooks.acknowledgements import Acknowledgement, PatientAcknowledgements
from cds_service.ops.privacy import keyed_digests, pseudonym
from cds_service.store.guard import StoreGuard, StoreSkipped
from cds_service.store.store import FeedbackStore, OverrideRow

RECALLS = Counter("cds_override_recalls_total",
                  "Look-ups of a patient's overridden cards, by result",
                  ["result"])  # answered | skipped (the store did not answer: cards shown)


class OverrideRecall:
    """Called as (patient id, now) -> the patient's recent overrides, or None."""

    def __init__(self, store: FeedbackStore, key: bytes, *, quiet_days: int,
                 deadline_seconds: float, reason_names: dict[tuple[str, str], str]):
        self.store = store
        self._key = key
        self.quiet_days = quiet_days
        # The service's own names for its override reasons, whatever display the EHR sent.
        self._reason_names = reason_names
        # SQLite answers inline (WAL readers never wait for the writer); a network database
        # behind a deadline on a small pool.
        self.guard = StoreGuard(
            "override-recall",
            deadline_seconds=None if store.dialect == "sqlite" else deadline_seconds,
            fallback="every card shown, none quieted")

    def __call__(self, patient_id: str, now: datetime) -> PatientAcknowledgements | None:
        if self.quiet_days <= 0:
            return None
        since = now - timedelta(days=self.quiet_days)
        try:
            rows = self.guard.call(partial(self.store.recent_overrides,
                                           pseudonym(patient_id, self._key), since))
        except StoreSkipped:
            RECALLS.labels("skipped").inc()
            return None
        RECALLS.labels("answered").inc()
        return PatientAcknowledgements(tuple(self._acknowledgement(row) for row in rows),
                                       partial(keyed_digests, key=self._key))

    def _acknowledgement(self, row: OverrideRow) -> Acknowledgement:
        reason = (self._reason_names.get((row.reason_system or "", row.reason_code or ""))
                  or row.reason_display or row.reason_code)
        return Acknowledgement(row.card_uuid, row.hook, row.outcome_at, row.evidence_keys,
                               reason)
