"""Storing one feedback request: checked against the issued cards and stored in one transaction,
so a batch is stored whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from .recorder import CardRecorder
from .store import FeedbackStore, StoreUnavailable, is_store_down
from .validation import FeedbackEntry, FeedbackInvalid, check_against_cards

# How long a feedback call may wait for this process's own card records to reach the store.
FLUSH_WAIT_SECONDS = 1.0


@dataclass(frozen=True)
class Stored:
    stored: int  # new rows
    duplicates: int  # reports already stored (or repeated within the batch)


def submit_feedback(store: FeedbackStore, recorder: CardRecorder | None, service_id: str,
                    entries: list[FeedbackEntry], *, client_iss: str | None,
                    received_at: datetime) -> Stored:
    try:
        try:
            return _store(store, service_id, entries, client_iss, received_at)
        except FeedbackInvalid as invalid:
            # A card shown a moment ago may still be on its way to the store from this
            # process's queue (or was committed just after our read): wait for the queue and
            # look once more before calling the card unknown.
            if not (invalid.unknown_cards and recorder is not None):
                raise
            recorder.flush(FLUSH_WAIT_SECONDS)
            return _store(store, service_id, entries, client_iss, received_at)
    except sa.exc.SQLAlchemyError as exc:
        if is_store_down(exc):
            raise StoreUnavailable("the feedback store is unavailable; send it again later") \
                from exc
        raise


def _store(store: FeedbackStore, service_id: str, entries: list[FeedbackEntry],
           client_iss: str | None, received_at: datetime) -> Stored:
    store.ensure_ready()
    unique = {entry.dedup_key: entry for entry in entries}
    with store.write() as connection:
        cards = store.known_cards(connection, (entry.card_uuid for entry in entries))
        check_against_cards(service_id, entries, cards)  # raising rolls everything back
        rows = [{
            "dedup_key": key, "card_uuid": entry.card_uuid, "service_id": service_id,
            "outcome": entry.outcome, "outcome_at": entry.outcome_at,
            "accepted_suggestions": list(entry.accepted_suggestions),
            "reason_system": entry.reason_system, "reason_code": entry.reason_code,
            "reason_display": entry.reason_display, "user_comment": entry.user_comment,
            "client_iss": client_iss, "received_at": received_at,
        } for key, entry in unique.items()]
        stored = store.insert_feedback(connection, rows)
    return Stored(stored, len(entries) - stored)
