"""One hook call, end to end: request -> patient data -> record -> assessment -> cards.

The same path serves the HTTP API and `cds-service evaluate`; it reads no clock but the
monotonic one that bounds FHIR fetching, and no global.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.cards.writer import CardWriter, IssuedCard
from cds_service.cdshooks.acknowledgements import (
    Acknowledgement,
    PatientAcknowledgements,
    Recall,
)
from cds_service.cdshooks.request import HookRequest, parse_request
from cds_service.cdshooks.services import SERVICES, Service
from cds_service.clinical.assessment import CRITICAL, Assessment, assess
from cds_service.clinical.record import PatientRecord
from cds_service.clinical.record_builder import build_record
from cds_service.fhir.client import ANSWER_MARGIN_SECONDS, FetchStats
from cds_service.fhir.prefetch import Fetcher, NoFetcher, gather
from cds_service.fhir.searches import patient_searches
from cds_service.knowledge import Knowledge


@dataclass(frozen=True)
class QuietedCard:
    """A card not shown: the clinician overrode one about the same things (`because`)."""

    card: IssuedCard
    because: Acknowledgement


@dataclass(frozen=True)
class HookResult:
    request: HookRequest
    response: dict
    issued: list[IssuedCard]
    quieted: tuple[QuietedCard, ...] = ()


class HookEngine:
    def __init__(self, knowledge: Knowledge, writer: CardWriter, fetcher: Fetcher | None = None,
                 deadline_seconds: float = 1.5):
        self.knowledge = knowledge
        self.writer = writer
        self.fetcher = fetcher or NoFetcher()
        self.deadline_seconds = deadline_seconds
        self.searches = patient_searches(knowledge)

    def record_for(self, request: HookRequest, now: datetime,
                   stats: FetchStats | None = None) -> PatientRecord:
        deadline = time.monotonic() + self.deadline_seconds - ANSWER_MARGIN_SECONDS
        data = gather(request, self.searches, self.fetcher, now, deadline, stats or FetchStats())
        return build_record(self.knowledge, request.patient_id, data.resources,
                            request.draft_orders, tuple(data.known_empty), as_of=now,
                            unavailable=tuple(data.unavailable))

    def assess(self, request: HookRequest, now: datetime,
               stats: FetchStats | None = None) -> tuple[PatientRecord, Assessment]:
        record = self.record_for(request, now, stats)
        return record, assess(record, self.knowledge, now, request.selections)

    def cards(self, request: HookRequest, assessment: Assessment) -> list[IssuedCard]:
        if request.service.hook == "patient-view":
            return self.writer.patient_view(assessment)
        return self.writer.order_cards(assessment, request.patient_id)

    def run(self, service: Service, body: Any, now: datetime, *, client_iss: str | None = None,
            stats: FetchStats | None = None, recall: Recall | None = None) -> HookResult:
        """Answer a decoded request body; also says which cards were issued and why. With
        `recall`, cards the clinician already overrode are quieted or annotated."""
        request = dataclasses.replace(parse_request(service, body), client_iss=client_iss)
        if service.hook != "patient-view" and not _drugs_to_judge(request):
            # No drug chosen yet (the Sandbox's order-select on page load): nothing can be
            # judged, so nothing is fetched.
            return HookResult(request, {"cards": []}, [])
        _record, assessment = self.assess(request, now, stats)
        issued = self.cards(request, assessment)
        quieted: list[QuietedCard] = []
        if recall is not None and any(c.indicator != CRITICAL for c in issued):
            known = recall(request.patient_id, now)
            if known is not None:
                issued, quieted = self._answered(request, issued, known)
        return HookResult(request, {"cards": [c.card for c in issued]}, issued, tuple(quieted))

    def _answered(self, request: HookRequest, issued: list[IssuedCard],
                  known: PatientAcknowledgements) -> tuple[list[IssuedCard], list[QuietedCard]]:
        """patient-view: a card about nothing the clinician has not already overridden is not
        shown again. Order cards always show (a drug is being ordered now), with the date the
        risk was last acknowledged. Critical cards are never quieted."""
        shown, quieted = [], []
        for card in issued:
            if card.indicator == CRITICAL:
                shown.append(card)
            elif request.service.hook == "patient-view":
                because = known.covering("patient-view", card.keys)
                if because is None:
                    shown.append(card)
                else:
                    quieted.append(QuietedCard(card, because))
            elif known.latest is not None:
                shown.append(self.writer.acknowledged(card, known.latest.at, known.latest.reason))
            else:
                shown.append(card)
        return shown, quieted

    def call(self, service: Service, body: Any, now: datetime, *, client_iss: str | None = None,
             stats: FetchStats | None = None) -> dict:
        """The CDS Hooks response for a decoded request body."""
        return self.run(service, body, now, client_iss=client_iss, stats=stats).response


def _drugs_to_judge(request: HookRequest) -> bool:
    """Whether a draft (a selected one, for order-select) names a medicine at all."""
    for order in request.draft_orders:
        if order.get("resourceType") != "MedicationRequest":
            continue
        if request.selections is not None and \
                f"MedicationRequest/{order.get('id')}" not in request.selections:
            continue
        concept = order.get("medicationCodeableConcept")
        if (isinstance(concept, dict) and (concept.get("coding") or concept.get("text"))) \
                or order.get("medicationReference"):
            return True
    return False


def service_for_hook(hook: str) -> Service | None:
    return next((s for s in SERVICES.values() if s.hook == hook), None)
