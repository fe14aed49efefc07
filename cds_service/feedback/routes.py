"""The feedback endpoint (CDS Hooks F1): thin, as every route; the work is in submit.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import orjson
from flask import Blueprint, Response, g
from prometheus_client import Counter

from ..errors import UnknownService
from ..request_body import decode_json_body  # the hook calls' body rules (415, 413, 400)
from ..services import SERVICES
from .recorder import CardRecorder
from .store import FeedbackStore
from .submit import submit_feedback
from .validation import FeedbackInvalid, parse_feedback

FEEDBACK = Counter("cds_feedback_reports_total", "Feedback reports received",
                   ["service", "result"])  # stored | duplicate | invalid (per request)


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


def feedback_blueprint(store: FeedbackStore, recorder: CardRecorder | None,
                       clock: Callable[[], datetime]) -> Blueprint:
    blueprint = Blueprint("feedback", __name__)

    @blueprint.post("/cds-services/<service_id>/feedback")
    def receive_feedback(service_id: str):
        if service_id not in SERVICES:
            raise UnknownService(f"no CDS service '{service_id}'; see GET /cds-services")
        now = clock()
        entries = parse_feedback(decode_json_body(), now)
        try:
            result = submit_feedback(store, recorder, service_id, entries,
                                     client_iss=g.get("client_iss"), received_at=now)
        except FeedbackInvalid:
            FEEDBACK.labels(service_id, "invalid").inc()
            raise
        FEEDBACK.labels(service_id, "stored").inc(result.stored)
        FEEDBACK.labels(service_id, "duplicate").inc(result.duplicates)
        return _json({"stored": result.stored, "duplicates": result.duplicates})

    @blueprint.errorhandler(FeedbackInvalid)
    def invalid_feedback(exc: FeedbackInvalid):
        # One issue per problem, each naming its entry, in the app's OperationOutcome shape.
        return _json({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": str(problem),
             "expression": [problem.where]} for problem in exc.problems]}, 400)

    return blueprint
