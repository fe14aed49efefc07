"""One hook call, end to end: request -> patient data -> record -> assessment -> cards.

The same path serves the HTTP API and `cds-service evaluate`; it reads no clock and no global.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .assessment import Assessment, assess
from .cards import CardWriter
from .knowledge import Knowledge
from .patient_record import build_record
from .prefetch import Fetcher, NoFetcher, gather
from .protocol import HookRequest, parse_request
from .record import PatientRecord
from .services import SERVICES, Service


class HookEngine:
    def __init__(self, knowledge: Knowledge, writer: CardWriter, fetcher: Fetcher | None = None):
        self.knowledge = knowledge
        self.writer = writer
        self.fetcher = fetcher or NoFetcher()

    def record_for(self, request: HookRequest) -> PatientRecord:
        data = gather(request, self.fetcher)
        return build_record(self.knowledge, request.patient_id, data.resources,
                            request.draft_orders, tuple(data.known_empty))

    def assess(self, request: HookRequest, now: datetime) -> tuple[PatientRecord, Assessment]:
        record = self.record_for(request)
        return record, assess(record, self.knowledge, now, request.selections)

    def cards(self, request: HookRequest, assessment: Assessment) -> list[dict]:
        if request.service.hook == "patient-view":
            return self.writer.patient_view(assessment)
        return self.writer.order_cards(assessment, request.patient_id)

    def call(self, service: Service, body: Any, now: datetime) -> dict:
        """The CDS Hooks response for a decoded request body."""
        request = parse_request(service, body)
        _record, assessment = self.assess(request, now)
        return {"cards": self.cards(request, assessment)}


def service_for_hook(hook: str) -> Service | None:
    return next((s for s in SERVICES.values() if s.hook == hook), None)
