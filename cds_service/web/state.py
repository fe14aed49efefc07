"""What one HTTP call carries from step to step: one typed object, attached to Flask's `g` once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from flask import g


@dataclass
class CallState:
    """Set up before authentication; filled by the route; read by the metrics after it."""

    started: float  # perf_counter when the whole request was in (latency includes auth)
    client_iss: str | None = None  # the authenticated EHR (None in development mode)
    cards: list[dict] = field(default_factory=list)  # the cards answered
    fhir_requests: int = 0
    fhir_seconds: float = 0.0
    # Feedback calls: reports received, newly stored, already stored.
    feedback_entries: int = 0
    feedback_stored: int = 0
    feedback_duplicates: int = 0


def begin_call(started: float | None = None) -> CallState:
    g.cds_call = CallState(started or time.perf_counter())
    return g.cds_call


def call_state() -> CallState:
    """This call's state (begun in before_request; begun now if a hook ran without it)."""
    state = g.get("cds_call")
    return state if isinstance(state, CallState) else begin_call()
