"""The Flask application: thin routes that translate HTTP to a HookEngine call and back.

Everything it calls is built elsewhere (bootstrap.py, the one wiring point) and handed in as
`WebParts`; per call, one `CallState` (web/state.py) carries what later steps need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from flask import Blueprint, Flask, Response, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cds_service.cards.writer import absolute_service_urls
from cds_service.cdshooks.acknowledgements import Recall
from cds_service.cdshooks.engine import HookEngine, HookResult
from cds_service.cdshooks.services import SERVICES
from cds_service.errors import ServiceError, UnknownService
from cds_service.fhir.client import FetchStats
from cds_service.fhir.searches import prefetch_templates
from cds_service.ops.config import Settings
from cds_service.ops.observability import ENGINE_FAILURES
from cds_service.ops.privacy import pseudonym
from cds_service.web import header_limits, health
from cds_service.web.body import decode_json_body
from cds_service.web.state import call_state

log = logging.getLogger("cds_service")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def operation_outcome(status: int, code: str, message: str) -> Response:
    """Error bodies are FHIR OperationOutcomes, as CDS Hooks 3.0 recommends."""
    return _json({"resourceType": "OperationOutcome",
                  "issue": [{"severity": "error", "code": code, "diagnostics": message}]}, status)


@dataclass
class WebParts:
    """What the HTTP layer is given: built once, at start, by bootstrap.py."""

    settings: Settings
    engine: HookEngine
    # (method, path, Authorization header) -> the calling EHR's issuer, or AuthenticationRequired
    authenticate: Callable[[str, str, str | None], str | None]
    clock: Callable[[], datetime]
    # A card uuid for a service: one the feedback endpoint can later verify.
    mint_card_id: Callable[[str], str]
    # Given each call's result after it is answered (e.g. the record of shown cards).
    on_cards_issued: list[Callable[[HookResult], None]] = field(default_factory=list)
    # The patient's recent overrides (override quieting); None: every card is shown.
    recall: Recall | None = None
    blueprints: Sequence[Blueprint] = ()
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)


def build_app(parts: WebParts) -> Flask:
    """The Flask app serving discovery, the hook calls and the given blueprints."""
    settings, engine, clock = parts.settings, parts.engine, parts.clock
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    templates = prefetch_templates(engine.knowledge)
    discovery_document = {"services": [s.discovery(templates) for s in SERVICES.values()]}
    CORS(app, origins=list(settings.cors_origins), methods=["GET", "POST", "OPTIONS"],
         allow_headers=["Authorization", "Content-Type"], max_age=600)
    # Health, readiness, metrics: registered first so hook timing starts before authentication.
    health.init_app(app, parts.ready_checks, SERVICES)
    # Oversized headers: the service's 431, before authentication reads them.
    header_limits.init_app(app)

    @app.before_request
    def authenticate() -> None:
        # Client JWT on every /cds-services call (not in development mode).
        call_state().client_iss = parts.authenticate(
            request.method, request.path, request.headers.get("Authorization"))

    for blueprint in parts.blueprints:
        app.register_blueprint(blueprint)

    @app.get("/cds-services")
    def discovery():
        return _json(discovery_document)

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str):
        state = call_state()  # timed since the whole request was in: authentication included
        service = SERVICES.get(service_id)
        if service is None:
            raise UnknownService(f"no CDS service '{service_id}'; see GET /cds-services")
        body = decode_json_body()
        patient_tag = "-"
        if isinstance(body, dict) and isinstance(body.get("context"), dict):
            patient_tag = pseudonym(str(body["context"].get("patientId")), settings.log_hash_key)
        stats = FetchStats()
        try:
            result = engine.run(service, body, clock(), client_iss=state.client_iss,
                                stats=stats, recall=parts.recall)
        except ServiceError as exc:
            log.info("hook %s patient=%s status=%d reason=%s", service_id, patient_tag,
                     exc.status, type(exc).__name__)
            raise
        except Exception:
            # Our own failure is never a silent "no cards": a 500 the EHR and the operators
            # see, counted apart, logged with the call's trace id (the EHR's hookInstance).
            ENGINE_FAILURES.labels(service_id).inc()
            trace = body.get("hookInstance") if isinstance(body, dict) else None
            log.exception("hook %s patient=%s trace=%s failed in the engine", service_id,
                          patient_tag, str(trace)[:64] if trace else "-")
            return operation_outcome(500, "exception", "internal error; the failure is logged")
        response = result.response
        # Card uuids this service can later recognise in feedback, with or without the record;
        # the rules page's address as the EHR reaches this service (CDS Hooks: absolute URLs).
        base = (settings.public_base_url or request.url_root).rstrip("/")
        for issued in result.issued:
            issued.card["uuid"] = parts.mint_card_id(service.id)
            absolute_service_urls(issued.card, base)
        state.cards = response["cards"]
        state.fhir_requests, state.fhir_seconds = stats.requests, stats.fetch_seconds
        for listener in parts.on_cards_issued:
            try:  # recording what was shown must never cost the clinician the card
                listener(result)
            except Exception:
                log.exception("a cards-issued listener failed")
        log.info("hook %s patient=%s status=200 cards=%d quieted=%d fhir_requests=%d ms=%.1f",
                 service_id, patient_tag, len(response["cards"]), len(result.quieted),
                 stats.requests,
                 (time.perf_counter() - state.started) * 1000)
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

    return app
