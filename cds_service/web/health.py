"""Health, readiness, Prometheus metrics and the timing of each hook call, over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flask import Flask, Response, request

from cds_service.ops.observability import metrics_body, metrics_content_type, observe_hook
from cds_service.ops.rsgi_bridge import RECEIVED_AT
from cds_service.web.state import begin_call, call_state

UNAUTHENTICATED_PATHS = ("/health", "/ready", "/metrics")


def init_app(app: Flask, ready_checks: dict[str, Callable[[], bool]],
             service_ids: Iterable[str]) -> None:
    """Register /health (alive), /ready (able to answer) and /metrics, and time hook calls."""
    known = frozenset(service_ids)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/ready")
    def ready():
        failing = [name for name, check in ready_checks.items() if not check()]
        status = 503 if failing else 200
        return {"status": "not ready" if failing else "ready", "failing": failing}, status

    @app.get("/metrics")
    def metrics():
        return Response(metrics_body(), mimetype=metrics_content_type())

    @app.before_request
    def start_timer():
        # From when the server had the whole request (rsgi_bridge), else from now (tests).
        begin_call(request.environ.get(RECEIVED_AT))

    @app.after_request
    def count_hook(response):
        parts = request.path.strip("/").split("/")
        if request.method == "POST" and len(parts) == 2 and parts[0] == "cds-services":
            state = call_state()
            # Only known ids become labels: a URL must not create metric series.
            observe_hook(parts[1] if parts[1] in known else "unknown", response.status_code,
                         time.perf_counter() - state.started, state.cards,
                         state.fhir_requests, state.fhir_seconds)
        return response
