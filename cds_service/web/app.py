"""The Flask application: thin routes that translate HTTP to a HookEngine call and back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from flask import Flask, Response, g, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cds_service.auth.verifier import client_authentication
from cds_service.cards.writer import CardTemplates, CardWriter
from cds_service.cdshooks.engine import HookEngine
from cds_service.cdshooks.services import SERVICES, prefetch_templates
from cds_service.errors import ServiceError, UnknownService
from cds_service.feedback import init_feedback
from cds_service.fhir.client import FetchStats, FhirFetcher
from cds_service.fhir.warmup import warm_up
from cds_service.knowledge import load_knowledge
from cds_service.ops import observability
from cds_service.ops.config import Settings
from cds_service.ops.privacy import pseudonym
from cds_service.web import header_limits
from cds_service.web.body import decode_json_body
from cds_service.web.openapi import blueprint as openapi_blueprint

log = logging.getLogger("cds_service")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def operation_outcome(status: int, code: str, message: str) -> Response:
    """Error bodies are FHIR OperationOutcomes, as CDS Hooks 3.0 recommends."""
    return _json({"resourceType": "OperationOutcome",
                  "issue": [{"severity": "error", "code": code, "diagnostics": message}]}, status)


def create_app(settings: Settings | None = None, *,
               clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Flask:
    """Build the service: knowledge and templates are loaded and compiled here, once."""
    settings = settings or Settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["SETTINGS"] = settings
    knowledge = load_knowledge(settings.knowledge_dir)
    writer = CardWriter(knowledge, CardTemplates.load(settings.cards_dir))
    engine = HookEngine(knowledge, writer, FhirFetcher(settings, knowledge),
                        settings.fhir_deadline_seconds)
    app.extensions["hook_engine"] = engine
    templates = prefetch_templates(knowledge)
    discovery_document = {"services": [s.discovery(templates) for s in SERVICES.values()]}
    # Callables given each HookResult after a successful call (e.g. the record of shown cards).
    app.extensions["cards_issued_listeners"] = []
    # Run when a server worker process ends (rsgi_bridge): e.g. write the queued card records.
    app.extensions["worker_exit_callbacks"] = []
    CORS(app, origins=list(settings.cors_origins), methods=["GET", "POST", "OPTIONS"],
         allow_headers=["Authorization", "Content-Type"], max_age=600)
    # Health, readiness, metrics: registered first so hook timing starts before authentication.
    observability.init_app(app, ready_checks={
        "knowledge": lambda: bool(engine.knowledge.factors),
        "card_templates": lambda: writer.pv_detail is not None,
    })
    # Oversized headers: the service's 431, before authentication reads them.
    header_limits.init_app(app)
    # Client JWT on every /cds-services call (not in development mode); sets g.client_iss.
    app.before_request(client_authentication(settings))
    app.register_blueprint(openapi_blueprint)
    # Feedback (CDS Hooks F1) and the record of every card shown, for acceptance analytics.
    feedback = init_feedback(app, settings, clock)

    @app.get("/cds-services")
    def discovery():
        return _json(discovery_document)

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str):
        # Since the whole request was in (observability): authentication and queueing included.
        started = g.get("started") or time.perf_counter()
        service = SERVICES.get(service_id)
        if service is None:
            raise UnknownService(f"no CDS service '{service_id}'; see GET /cds-services")
        body = decode_json_body()
        patient_tag = "-"
        if isinstance(body, dict) and isinstance(body.get("context"), dict):
            patient_tag = pseudonym(str(body["context"].get("patientId")), settings.log_hash_key)
        try:
            stats = FetchStats()
            result = engine.run(service, body, clock(), client_iss=g.get("client_iss"),
                                stats=stats)
            response = result.response
        except ServiceError as exc:
            log.info("hook %s patient=%s status=%d reason=%s", service_id, patient_tag,
                     exc.status, type(exc).__name__)
            raise
        except Exception:
            # Never block ordering because of our own failure: no card, and a log to fix it.
            log.exception("hook %s patient=%s failed; answering with no cards", service_id,
                          patient_tag)
            return _json({"cards": []})
        # Card uuids this service can later recognise in feedback, with or without the record.
        for issued in result.issued:
            issued.card["uuid"] = feedback.card_ids.mint(service.id)
        g.cards_returned = response["cards"]
        g.fhir_requests, g.fhir_seconds = stats.requests, stats.fetch_seconds
        for listener in app.extensions["cards_issued_listeners"]:
            try:  # recording what was shown must never cost the clinician the card
                listener(result)
            except Exception:
                log.exception("a cards-issued listener failed")
        log.info("hook %s patient=%s status=200 cards=%d fhir_requests=%d ms=%.1f", service_id,
                 patient_tag, len(response["cards"]), stats.requests,
                 (time.perf_counter() - started) * 1000)
        answer = _json(response)
        # How many FHIR requests the call needed (0 with complete prefetch), for operators.
        answer.headers["Server-Timing"] = f'fhir;desc="{stats.requests} requests"'
        return answer

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        response = operation_outcome(exc.status, exc.code, exc.message)
        response.headers.extend(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        status = exc.code or 500
        code = "too-costly" if status == 413 else "invalid" if status < 500 else "exception"
        response = operation_outcome(status, code, exc.description or exc.name)
        # Keep the protocol headers werkzeug computed (Allow on a 405).
        response.headers.extend((k, v) for k, v in exc.get_headers() if k != "Content-Type")
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return operation_outcome(500, "exception", "internal error")

    warm_up(app)
    return app
