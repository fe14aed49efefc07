"""The four prefetch states of each declared key (cds-hooks.md P4-P7).

absent or OperationOutcome -> the data must be fetched (P4, P7); `null` -> known empty (P5);
a resource or searchset Bundle -> use it (P6). What cannot be had is DataUnavailable (P9, 412).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .errors import DataUnavailable
from .fhir_read import bundle_resources
from .protocol import HookRequest
from .services import PREFETCH


@dataclass
class PatientData:
    resources: list[dict] = field(default_factory=list)
    known_empty: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class Fetcher(Protocol):
    def fetch(self, request: HookRequest, keys: list[str]) -> dict[str, list[dict]]:
        """Resources for each key, or raise DataUnavailable."""


class NoFetcher:
    """Prefetch only: anything missing makes the call unanswerable."""

    def fetch(self, request: HookRequest, keys: list[str]) -> dict[str, list[dict]]:
        raise DataUnavailable(
            "prefetch is missing " + ", ".join(keys) + " and this service does not query "
            "the FHIR server; send the prefetch declared by discovery")


def gather(request: HookRequest, fetcher: Fetcher) -> PatientData:
    data = PatientData()
    for key in PREFETCH:
        if key not in request.prefetch:
            data.missing.append(key)
            continue
        value = request.prefetch[key]
        if value is None:
            data.known_empty.append(key)
        elif value.get("resourceType") == "OperationOutcome":
            data.missing.append(key)
        else:
            data.resources += bundle_resources(value)
    if data.missing:
        for resources in fetcher.fetch(request, data.missing).values():
            data.resources += resources
    return data
