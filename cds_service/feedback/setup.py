"""Wiring into the Flask app: store (migrated now), recorder (a listener), feedback route."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flask import Flask

from cds_service.cards.ids import CardIds
from cds_service.feedback.recorder import CardRecorder, record_hash_key
from cds_service.feedback.routes import feedback_blueprint
from cds_service.ops.config import Settings
from cds_service.store.store import FeedbackStore, StoreUnavailable, database_url

log = logging.getLogger("cds_service.feedback")


@dataclass(frozen=True)
class Feedback:
    store: FeedbackStore
    recorder: CardRecorder
    card_ids: CardIds  # mints the card uuids the feedback endpoint can verify


def init_feedback(app: Flask, settings: Settings, clock: Callable[[], datetime]) -> Feedback:
    store = FeedbackStore(database_url(settings.database_url, settings.instance_dir))
    try:
        store.ensure_ready()
    except StoreUnavailable:
        # Cards are still served; the recorder and the feedback route retry the migration.
        log.warning("feedback store %s unreachable at start; retrying in the background",
                    store.display_url())
    # `serve` builds the app in the main process: let no pooled connection be
    # inherited by the forked workers.
    store.dispose()
    if settings.record_hash_key is None and not settings.development:
        log.warning("the record's pseudonym key is kept in instance_dir beside the card store: "
                    "a copy of both allows re-identification by trying patient ids; set "
                    "CDS_RECORD_HASH_KEY, CDS_RECORD_HASH_KEY_FILE or record_hash_key_file")
    key = record_hash_key(settings.record_hash_key, settings.instance_dir)
    recorder = CardRecorder(store, key, clock=clock)
    card_ids = CardIds(key)
    app.extensions["cards_issued_listeners"].append(recorder)
    app.register_blueprint(feedback_blueprint(store, card_ids, clock,
                                            settings.feedback_store_timeout_seconds))
    feedback = Feedback(store, recorder, card_ids)
    app.extensions["feedback"] = feedback
    # Write what is queued when a worker exits: at interpreter exit, or when the server ends a
    # worker process (which skips atexit).
    atexit.register(recorder.close, 2.0)
    app.extensions["worker_exit_callbacks"].append(lambda: recorder.close(2.0))
    return feedback
