"""Storing one feedback request: checked against the issued cards and stored in one transaction,
so a batch is stored whole or not at all.

A card whose record is not in the store yet is accepted when its uuid proves this service issued
it (card_ids.py): the report goes to early_feedback and is moved to card_feedback when the record
comes (store.reconcile_early_feedback). Nothing waits for the record: an outcome is never
refused for timing. A store that cannot answer gives 503 with Retry-After, never 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from cds_service.cards.ids import CardIds
from cds_service.cdshooks.services import SERVICES
from cds_service.feedback.validation import FeedbackEntry, check_against_cards
from cds_service.store.store import FeedbackStore, StoreUnavailable, is_store_down


@dataclass(frozen=True)
class Stored:
    stored: int  # new rows (those awaiting their card's record included)
    duplicates: int  # reports already stored (or repeated within the batch)


def submit_feedback(store: FeedbackStore, service_id: str,
                    entries: list[FeedbackEntry], *, client_iss: str | None,
                    received_at: datetime, card_ids: CardIds | None = None) -> Stored:
    try:
        return _store(store, card_ids, service_id, entries, client_iss, received_at)
    except sa.exc.SQLAlchemyError as exc:
        if is_store_down(exc):
            raise StoreUnavailable("the feedback store is unavailable; send it again later") \
                from exc
        raise


def _row(key: str, entry: FeedbackEntry, service_id: str, client_iss: str | None,
         received_at: datetime) -> dict:
    return {"dedup_key": key, "card_uuid": entry.card_uuid, "service_id": service_id,
            "outcome": entry.outcome, "outcome_at": entry.outcome_at,
            "accepted_suggestions": list(entry.accepted_suggestions),
            "reason_system": entry.reason_system, "reason_code": entry.reason_code,
            "reason_display": entry.reason_display, "user_comment": entry.user_comment,
            "client_iss": client_iss, "received_at": received_at}


def _store(store: FeedbackStore, card_ids: CardIds | None, service_id: str,
           entries: list[FeedbackEntry], client_iss: str | None,
           received_at: datetime) -> Stored:
    store.ensure_ready()
    unique = {entry.dedup_key: entry for entry in entries}
    with store.write() as connection:
        cards = store.known_cards(connection, (entry.card_uuid for entry in entries))
        early = check_against_cards(  # raising rolls everything back
            service_id, entries, cards,
            lambda uuid: card_ids.issuer(uuid, SERVICES) if card_ids is not None else None)
        early_keys = {entry.dedup_key for entry in early}
        rows = [_row(key, entry, service_id, client_iss, received_at)
                for key, entry in unique.items() if key not in early_keys]
        waiting = [_row(key, entry, service_id, client_iss, received_at)
                   for key, entry in unique.items() if key in early_keys]
        stored = store.insert_feedback(connection, rows)
        stored += store.insert_early_feedback(connection, waiting)
    return Stored(stored, len(entries) - stored)
