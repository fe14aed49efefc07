"""Reading what prefetch lacks from the EHR's FHIR server, within the hook call's deadline.

Safety first: only allow-listed servers are contacted (no open proxy), redirects are not
followed, the access token goes only into the Authorization header (never a log). Independent
searches run concurrently; the whole call has one deadline, after which the answer is 412 rather
than a late card. Retries are urllib3's, for idempotent GETs on transient failures only.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from cds_service.errors import DataUnavailable
from cds_service.fhir.prefetch import FetchStats, PatientCall
from cds_service.fhir.read import bundle_resources
from cds_service.fhir.searches import patient_searches
from cds_service.knowledge import Knowledge
from cds_service.ops.config import Settings
from cds_service.ops.privacy import pseudonym

log = logging.getLogger("cds_service.fhir")

MAX_PAGES = 20
PAGE_SIZE = 200
# Keep a little of the budget for assessing and answering.
ANSWER_MARGIN_SECONDS = 0.1


class FhirFetcher:
    """Fetches missing prefetch keys from the request's fhirServer, concurrently, in time."""

    def __init__(self, settings: Settings, knowledge: Knowledge, *, threads: int = 8,
                 page_size: int = PAGE_SIZE):
        self.settings = settings
        self.page_size = page_size
        self.knowledge = knowledge
        self.searches = patient_searches(knowledge)
        self.session = requests.Session()
        retry = Retry(total=2, connect=1, read=0, status=1, other=0,
                      status_forcelist=(502, 503, 504), allowed_methods=frozenset({"GET"}),
                      backoff_factor=0.05, raise_on_status=False,
                      respect_retry_after_header=False)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=threads, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.trust_env = False  # no proxies or netrc credentials from the environment
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fhir")

    # -- public --------------------------------------------------------------------------------
    def fetch(self, request: PatientCall, keys: list[str], now: datetime, deadline: float,
              stats: FetchStats,
              optional: frozenset[str] = frozenset()) -> dict[str, list[dict[str, Any]]]:
        required = [k for k in keys if k not in optional]
        try:
            base = self._base(request)
        except DataUnavailable:
            if required:
                raise
            return {}  # only evidence that can add risk is missing: go on without it
        queries = {search.key: search.fallback(request.patient_id, now, self.page_size)
                   for search in self.searches}
        futures = {self.executor.submit(self._search_all, request, base, *queries[key],
                                        deadline, stats): key for key in keys}
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()),
                             return_when=FIRST_EXCEPTION)
        while pending and not any(f.exception() is not None and futures[f] not in optional
                                  for f in done):
            # An optional search failing first does not end the wait for the others.
            more, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                 return_when=FIRST_EXCEPTION)
            if not more:
                break
            done |= more
        for future in pending:
            future.cancel()
        failed = [error for f in done
                  if futures[f] not in optional and (error := f.exception()) is not None]
        if failed:
            raise failed[0]
        if any(futures[f] not in optional for f in pending):
            raise DataUnavailable("the FHIR server did not answer in time")
        return {futures[f]: f.result() for f in done if f.exception() is None}

    def read(self, request: PatientCall, references: list[str], deadline: float,
             stats: FetchStats) -> list[dict[str, Any]]:
        """Read referenced resources (e.g. Medication/x); what fails or is late is left out."""
        if not references or request.fhir_server is None:
            return []
        try:
            base = self._base(request)
        except DataUnavailable:
            return []
        futures = [self.executor.submit(self._get_json, request, f"{base}/{ref}", None,
                                        deadline, stats) for ref in references]
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        for future in pending:
            future.cancel()
        return [f.result() for f in done if f.exception() is None and isinstance(
            f.result(), dict)]

    # -- internals -----------------------------------------------------------------------------
    def _base(self, request: PatientCall) -> str:
        if request.fhir_server is None:
            raise DataUnavailable("prefetch is incomplete and the request names no fhirServer")
        base = request.fhir_server.rstrip("/")
        if not self.settings.fhir_server_allowed(base, request.client_iss):
            log.warning("fhirServer not allow-listed, not contacted: host=%s client=%s",
                        urlsplit(base).hostname, request.client_iss or "-")
            raise DataUnavailable("prefetch is incomplete and fhirServer is not one this "
                                  "service is configured to read")
        return base

    def _search_all(self, request: PatientCall, base: str, path: str, params: dict[str, Any],
                    deadline: float, stats: FetchStats) -> list[dict[str, Any]]:
        """A search (or read) with its following pages, all on the same server."""
        document = self._get_json(request, f"{base}/{path}", params, deadline, stats)
        if document.get("resourceType") != "Bundle":
            if document.get("resourceType") == "OperationOutcome":
                raise DataUnavailable(f"the FHIR server could not give {path}")
            return [document]
        resources = self._entries(document)
        for _page in range(MAX_PAGES):
            next_url = next((link.get("url") for link in document.get("link") or ()
                             if isinstance(link, dict) and link.get("relation") == "next"), None)
            if not next_url:
                break
            if not isinstance(next_url, str) or not next_url.startswith(base + "/"):
                raise DataUnavailable("the FHIR server's next page is not on the same server")
            document = self._get_json(request, next_url, None, deadline, stats)
            resources += self._entries(document)
        return resources

    @staticmethod
    def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
        entry = bundle.get("entry")
        entries = entry if isinstance(entry, list) else []
        outcome = {id(e.get("resource")) for e in entries if isinstance(e, dict)
                   and isinstance(e.get("search"), dict) and e["search"].get("mode") == "outcome"}
        return [r for r in bundle_resources(bundle) if id(r) not in outcome]

    def _get_json(self, request: PatientCall, url: str, params: dict[str, Any] | None,
                  deadline: float, stats: FetchStats) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DataUnavailable("the FHIR server did not answer in time")
        headers = {"Accept": "application/fhir+json"}
        if request.access_token:
            headers["Authorization"] = f"Bearer {request.access_token}"
        timeout = (min(remaining, 0.5), remaining)
        try:
            stats.count()
            response = self.session.get(url, params=params, headers=headers, timeout=timeout,
                                        allow_redirects=False)
            if response.status_code in (405, 414) and params:
                # Some servers only search by POST (long queries, or by policy).
                stats.count()
                response = self.session.post(
                    f"{url}/_search", data=params, headers=headers,
                    timeout=(min(remaining, 0.5), max(0.01, deadline - time.monotonic())),
                    allow_redirects=False)
        except requests.RequestException as exc:
            log.info("FHIR request failed: %s patient=%s", type(exc).__name__,
                     pseudonym(request.patient_id, self.settings.log_hash_key))
            raise DataUnavailable("the FHIR server could not be read") from None
        if response.status_code != 200:
            log.info("FHIR request answered %d", response.status_code)
            raise DataUnavailable(f"the FHIR server answered {response.status_code}")
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise DataUnavailable("the FHIR server did not answer with FHIR JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            raise DataUnavailable("the FHIR server did not answer with a FHIR resource")
        return document

