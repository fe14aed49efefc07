"""The one wiring point: every part of the service is built here, from the settings, and handed
to what uses it. The CLI, the server and the tests all come through these functions.

    create_engine(settings)   the clinical path without Flask (evaluate, screening, tests)
    build(settings, clock)    the HTTP service and its parts (serve, tests)
    create_app(settings)      build(...).app, for a test client
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from flask import Flask

from cds_service.auth.verifier import ClientAuthentication
from cds_service.cards.ids import CardIds
from cds_service.cards.writer import CardTemplates, CardWriter
from cds_service.cdshooks.engine import HookEngine
from cds_service.feedback.quieting import OverrideRecall
from cds_service.feedback.recorder import CardRecorder, record_hash_key
from cds_service.feedback.routes import feedback_blueprint
from cds_service.fhir.client import FhirFetcher
from cds_service.fhir.prefetch import Fetcher
from cds_service.fhir.warmup import warm_up
from cds_service.knowledge import load_knowledge
from cds_service.ops.config import Settings
from cds_service.store.store import FeedbackStore, StoreUnavailable, database_url
from cds_service.web.app import WebParts, build_app
from cds_service.web.openapi import blueprint as openapi_blueprint
from cds_service.web.rules import rules_blueprint

log = logging.getLogger("cds_service")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Feedback:
    store: FeedbackStore
    recorder: CardRecorder
    card_ids: CardIds  # mints the card uuids the feedback endpoint can verify
    key: bytes  # of the patient pseudonyms and evidence hashes in the store


@dataclass
class Service:
    """The running service: the Flask app and the parts behind it."""

    app: Flask
    settings: Settings
    engine: HookEngine
    feedback: Feedback
    parts: WebParts
    # Run when a server worker process ends (its atexit handlers do not): write what is queued.
    on_worker_exit: list[Callable[[], None]] = field(default_factory=list)


# The service behind each app this process built: typed access to its parts for the tests and
# benchmarks that drive an app (never string keys in app.extensions).
_BUILT: weakref.WeakKeyDictionary[Flask, Service] = weakref.WeakKeyDictionary()


def service_of(app: Flask) -> Service:
    return _BUILT[app]


def create_engine(settings: Settings | None = None, *, read_fhir: bool = False,
                  fetcher: Fetcher | None = None) -> HookEngine:
    """Knowledge, card wording and the hook path. It reads what prefetch lacks from the EHR's
    FHIR server with `read_fhir` (or through `fetcher`); otherwise prefetch only."""
    settings = settings or Settings()
    knowledge = load_knowledge(settings.knowledge_dir)
    writer = CardWriter(knowledge, CardTemplates.load(settings.cards_dir))
    if fetcher is None and read_fhir:
        fetcher = FhirFetcher(settings, knowledge)
    return HookEngine(knowledge, writer, fetcher, settings.fhir_deadline_seconds)


def create_feedback(settings: Settings, clock: Callable[[], datetime] = _now) -> Feedback:
    """The store of shown cards and outcomes (migrated now), its recorder and the card ids."""
    store = FeedbackStore(database_url(settings.database_url, settings.instance_dir))
    try:
        store.ensure_ready()
    except StoreUnavailable:
        # Cards are still served; the recorder and the feedback route retry the migration.
        log.warning("feedback store %s unreachable at start; retrying in the background",
                    store.display_url())
    # `serve` builds the app in the main process: let no pooled connection be inherited by the
    # forked workers.
    store.dispose()
    if settings.record_hash_key is None and not settings.development:
        log.warning("the record's pseudonym key is kept in instance_dir beside the card store: "
                    "a copy of both allows re-identification by trying patient ids; set "
                    "CDS_RECORD_HASH_KEY, CDS_RECORD_HASH_KEY_FILE or record_hash_key_file")
    key = record_hash_key(settings.record_hash_key, settings.instance_dir)
    return Feedback(store, CardRecorder(store, key, clock=clock), CardIds(key), key)


def build(settings: Settings | None = None, *, clock: Callable[[], datetime] = _now,
          engine: HookEngine | None = None) -> Service:
    """The HTTP service: knowledge and templates loaded, stores opened, fhir.resources warmed."""
    settings = settings or Settings()
    engine = engine or create_engine(settings, read_fhir=True)
    authenticate = ClientAuthentication(settings)
    feedback = create_feedback(settings, clock)
    reasons = engine.writer.override_reasons
    recall = OverrideRecall(
        feedback.store, feedback.key, quiet_days=settings.override_quiet_days,
        deadline_seconds=settings.override_store_timeout_seconds,
        reason_names={(r["system"], r["code"]): r["display"] for r in reasons})
    parts = WebParts(
        settings=settings, engine=engine, authenticate=authenticate, clock=clock,
        mint_card_id=feedback.card_ids.mint,
        on_cards_issued=[feedback.recorder],
        recall=recall,
        blueprints=(openapi_blueprint, feedback_blueprint(
            feedback.store, feedback.card_ids, clock, settings.feedback_store_timeout_seconds),
            rules_blueprint(engine.knowledge, engine.writer,
                            quiet_days=settings.override_quiet_days,
                            knowledge_dir=settings.knowledge_dir)),
        ready_checks={"knowledge": lambda: bool(engine.knowledge.factors),
                      "card_templates": lambda: engine.writer.pv_detail is not None},
    )
    service = Service(build_app(parts), settings, engine, feedback, parts,
                      on_worker_exit=[lambda: feedback.recorder.close(2.0)])
    atexit.register(feedback.recorder.close, 2.0)
    _BUILT[service.app] = service
    warm_up()
    return service


def create_app(settings: Settings | None = None, *, clock: Callable[[], datetime] = _now,
               engine: HookEngine | None = None) -> Flask:
    return build(settings, clock=clock, engine=engine).app
