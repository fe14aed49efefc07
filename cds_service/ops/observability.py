"""Prometheus metrics and JSON logs (the HTTP side is web/health.py). No patient data here.

Under `cds-service serve` each worker is a process: with PROMETHEUS_MULTIPROC_DIR set (serve
sets it), metrics are written to files there and /metrics aggregates all workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from pythonjsonlogger.json import JsonFormatter

# Latency buckets around the targets: a few ms per call, EHR patience ~0.5-2 s.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

HOOK_REQUESTS = Counter("cds_hook_requests_total", "Hook calls answered",
                        ["service", "status"])
HOOK_LATENCY = Histogram("cds_hook_request_seconds", "Hook call latency", ["service", "status"],
                         buckets=_BUCKETS)
CARDS = Counter("cds_cards_total", "Cards returned", ["service", "indicator"])
FHIR_CALLS = Counter("cds_fhir_requests_total", "Requests made to EHR FHIR servers",
                     ["service"])
FHIR_LATENCY = Histogram("cds_fhir_fetch_seconds", "Time spent fetching missing prefetch",
                         ["service"], buckets=_BUCKETS)
AUTH_FAILURES = Counter("cds_auth_failures_total", "Rejected client authentications")

# An exception inside the engine: answered 500 (never a silent "no cards"), counted here.
ENGINE_FAILURES = Counter("cds_engine_failures_total", "Hook calls the engine failed on",
                          ["service"])


def observe_hook(service: str, status: int, seconds: float, cards: Sequence[dict] = (),
                 fhir_requests: int = 0, fhir_seconds: float = 0.0) -> None:
    label = str(status)
    HOOK_REQUESTS.labels(service, label).inc()
    HOOK_LATENCY.labels(service, label).observe(seconds)
    for card in cards:
        CARDS.labels(service, card["indicator"]).inc()
    if fhir_requests:
        FHIR_CALLS.labels(service).inc(fhir_requests)
        FHIR_LATENCY.labels(service).observe(fhir_seconds)


def metrics_body() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def metrics_content_type() -> str:
    return CONTENT_TYPE_LATEST


def json_logging_config(loggers: dict[str, dict]) -> dict:
    """A logging.config dict that writes the given loggers (a server's: granian's, gunicorn's)
    and the root as JSON lines on stderr, like the service's own."""
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "cds_service.ops.observability.json_formatter"}},
        "handlers": {"console": handler},
        "loggers": loggers,
        "root": {"handlers": ["console"], "level": "INFO"},
    }


def json_formatter() -> JsonFormatter:
    """The one log line shape, for the service's loggers and the server's (server.log_config)."""
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"levelname": "level", "asctime": "time"})


def json_logging(level: int = logging.INFO) -> None:
    """One JSON object per log line, for log shippers; messages never hold PHI or tokens."""
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
