"""The four prefetch states of each declared key (cds-hooks.md P4-P7).

absent or OperationOutcome -> fetch it from fhirServer (P4, P7); `null` -> known empty, no query
(P5); a resource or searchset Bundle -> use it, fetching further pages if it is paged (P6). What
cannot be had is DataUnavailable (P9, 412). Complete prefetch makes no FHIR call at all (P10).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from cds_service.errors import DataUnavailable
from cds_service.fhir.dates import parse_instant, raw_period_end
from cds_service.fhir.read import bundle_resources, unresolved_medications
from cds_service.fhir.searches import PatientSearch


class PatientCall(Protocol):
    """What the FHIR side needs of a hook call (cdshooks.request.PatientCall is one)."""

    @property
    def patient_id(self) -> str: ...
    @property
    def prefetch(self) -> dict[str, Any]: ...
    @property
    def draft_orders(self) -> list[dict[str, Any]]: ...
    @property
    def fhir_server(self) -> str | None: ...
    @property
    def access_token(self) -> str | None: ...
    @property
    def client_iss(self) -> str | None: ...


class FetchStats:
    """FHIR requests made during one hook call (thread-safe; reported in Server-Timing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.fetch_seconds = 0.0
        self.started = time.perf_counter()

    def count(self) -> None:
        with self._lock:
            self.requests += 1

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@dataclass
class PatientData:
    resources: list[dict[str, Any]] = field(default_factory=list)
    known_empty: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    # Optional keys neither sent nor readable: the assessment went on without them.
    unavailable: list[str] = field(default_factory=list)


class Fetcher(Protocol):
    def fetch(self, request: PatientCall, keys: list[str], now: datetime, deadline: float,
              stats: FetchStats,
              optional: frozenset[str] = frozenset()) -> dict[str, list[dict[str, Any]]]:
        """Resources for each key; raise DataUnavailable when a key not in `optional` cannot be
        had. Optional keys that cannot be had are left out of the answer."""

    def read(self, request: PatientCall, references: list[str], deadline: float,
             stats: FetchStats) -> list[dict[str, Any]]:
        """Referenced resources that could be read in time."""


class NoFetcher:
    """Prefetch only: anything missing makes the call unanswerable."""

    def fetch(self, request: PatientCall, keys: list[str], now: datetime, deadline: float,
              stats: FetchStats,
              optional: frozenset[str] = frozenset()) -> dict[str, list[dict[str, Any]]]:
        required = [k for k in keys if k not in optional]
        if required:
            raise DataUnavailable("prefetch is missing " + ", ".join(required) + " and this "
                                  "service does not query FHIR servers; send the prefetch from "
                                  "discovery")
        return {}

    def read(self, request: PatientCall, references: list[str], deadline: float,
             stats: FetchStats) -> list[dict[str, Any]]:
        return []


def _has_next_page(bundle: dict[str, Any]) -> bool:
    links = bundle.get("link")
    return isinstance(links, list) and any(
        isinstance(link, dict) and link.get("relation") == "next" for link in links)


def _when(resource: dict[str, Any]) -> datetime | None:
    return (raw_period_end(resource.get("period")) or parse_instant(
        resource.get("effectiveDateTime")) or raw_period_end(resource.get("effectivePeriod")))


def _first_page_suffices(search: PatientSearch, bundle: dict[str, Any], now: datetime) -> bool:
    """A paged search sorted newest first whose first page already reaches past the window the
    rules read holds everything they need: its later pages are not fetched."""
    if not search.sort_template or search.window_days is None:
        return False
    resources = bundle_resources(bundle)
    dates = [d for r in resources if (d := _when(r)) is not None]
    if not dates or len(dates) != len(resources) or dates != sorted(dates, reverse=True):
        return False
    return dates[-1] < now - timedelta(days=search.window_days)


def gather(request: PatientCall, searches: tuple[PatientSearch, ...], fetcher: Fetcher,
           now: datetime, deadline: float, stats: FetchStats) -> PatientData:
    data = PatientData()
    to_fetch = []
    declared = {search.key for search in searches}
    # Resources a client sent under keys of its own naming are read too (by their type).
    elsewhere: set[str] = set()
    for key, value in request.prefetch.items():
        if key not in declared and isinstance(value, dict):
            found = bundle_resources(value)
            data.resources += found
            elsewhere |= {kind for r in found if isinstance(kind := r.get("resourceType"), str)}
    for search in searches:
        key = search.key
        value = request.prefetch.get(key, ...)
        if value is ... and search.resource_type in elsewhere:
            continue  # sent, under another name
        if value is ...:
            to_fetch.append(key)
        elif value is None:
            data.known_empty.append(key)
        elif value.get("resourceType") == "OperationOutcome":
            to_fetch.append(key)
        elif (value.get("resourceType") == "Bundle" and _has_next_page(value)
              and not _first_page_suffices(search, value, now)):
            # A paged prefetch holds only its first page: the fetch reads the whole search.
            to_fetch.append(key)
        else:
            data.resources += bundle_resources(value)
    started = time.perf_counter()
    if to_fetch:
        optional = frozenset(s.key for s in searches if s.optional)
        try:
            got = fetcher.fetch(request, to_fetch, now, deadline, stats, optional)
        finally:
            stats.fetch_seconds += time.perf_counter() - started
        for resources in got.values():
            data.resources += resources
        data.fetched = list(got)
        data.unavailable = [key for key in to_fetch if key not in got]
    missing = unresolved_medications(data.resources + request.draft_orders)
    if missing and time.monotonic() < deadline:
        data.resources += fetcher.read(request, missing, deadline, stats)
        stats.fetch_seconds += time.perf_counter() - started
    return data
