"""The feedback endpoint (CDS Hooks F1): thin, as every route; the work is in submit.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial

import orjson
from flask import Blueprint, Response, request
from prometheus_client import Counter

from cds_service.cards.ids import CardIds
from cds_service.cdshooks.services import SERVICES
from cds_service.errors import UnknownService
from cds_service.feedback.submit import submit_feedback
from cds_service.feedback.validation import FeedbackInvalid, parse_feedback
from cds_service.store.guard import StoreGuard, StoreSkipped
from cds_service.store.store import FeedbackStore, StoreUnavailable
from cds_service.web.body import decode_json_body  # the hook calls' body rules (415, 413, 400)
from cds_service.web.state import call_state

log = logging.getLogger("cds_service")
FEEDBACK = Counter("cds_feedback_reports_total", "Feedback reports received",
                   ["service", "result"])  # stored | duplicate | invalid | unavailable


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def feedback_blueprint(store: FeedbackStore, card_ids: CardIds, clock: Callable[[], datetime],
                       deadline_seconds: float = 0.05) -> Blueprint:
    blueprint = Blueprint("feedback", __name__)
    # A feedback call waits at most `deadline_seconds` for the store, then answers 503
    # (Retry-After): it runs on a worker that also serves cards, so a store that hangs may delay
    # a card by this much, at most 3 times per worker per 30 s (the breaker). A normal feedback
    # write takes milliseconds.
    guard = StoreGuard("feedback", deadline_seconds=deadline_seconds, fail_max=3,
                       fallback="feedback answered 503 with Retry-After",
                       exclude=(FeedbackInvalid,))

    @blueprint.post("/cds-services/<service_id>/feedback")
    def receive_feedback(service_id: str):
        if service_id not in SERVICES:
            raise UnknownService(f"no CDS service '{service_id}'; see GET /cds-services")
        now = clock()
        entries = parse_feedback(decode_json_body(), now)
        call_state().feedback_entries = len(entries)
        try:
            result = guard.call(partial(submit_feedback, store, service_id, entries,
                                        client_iss=call_state().client_iss, received_at=now,
                                        card_ids=card_ids))
        except FeedbackInvalid:
            FEEDBACK.labels(service_id, "invalid").inc()
            raise
        except StoreSkipped:
            FEEDBACK.labels(service_id, "unavailable").inc()
            raise StoreUnavailable("the feedback store is unavailable; send it again later") \
                from None
        FEEDBACK.labels(service_id, "stored").inc(result.stored)
        FEEDBACK.labels(service_id, "duplicate").inc(result.duplicates)
        state = call_state()
        state.feedback_stored, state.feedback_duplicates = result.stored, result.duplicates
        return _json({"stored": result.stored, "duplicates": result.duplicates})

    @blueprint.after_request
    def log_feedback_call(response: Response) -> Response:
        # One line per feedback call, as for hook calls: counts and status, no card or patient.
        service_id = (request.view_args or {}).get("service_id")
        state = call_state()
        log.info("feedback %s status=%d entries=%d stored=%d duplicates=%d ms=%.1f",
                 service_id if service_id in SERVICES else "unknown-service",
                 response.status_code, state.feedback_entries, state.feedback_stored,
                 state.feedback_duplicates, (time.perf_counter() - state.started) * 1000)
        return response

    @blueprint.errorhandler(FeedbackInvalid)
    def invalid_feedback(exc: FeedbackInvalid):
        # One issue per problem, each naming its entry, in the app's OperationOutcome shape.
        return _json({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": str(problem),
             "expression": [problem.where]} for problem in exc.problems]}, 400)

    return blueprint
