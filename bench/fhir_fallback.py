"""The FHIR fallback path: patient-view when prefetch is missing, against a real FHIR server.

Starts sekmet-fhir (the same server the integration tests use) and `cds-service serve`
(1 sync worker), loads the reference patient, then measures, one request at a time:

- full prefetch (no FHIR call: the baseline of this run),
- no prefetch at all (every key read from the FHIR server, concurrently),
- one key missing (observations),

and prints p50/p99 and the number of FHIR requests per hook call (from the Server-Timing header
the service sets). Loopback only.

    .venv/bin/python bench/fhir_fallback.py [--requests 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from fhir_server import TOKEN, SekmetServer  # noqa: E402
from production_server import ProductionServer  # noqa: E402

REFERENCE = ROOT / "fixtures" / "requests" / "reference-patient-view.json"
BUNDLE = ROOT / "fixtures" / "patients" / "reference-patient-view.json"
PATH = "/cds-services/calciphylaxis-patient-view"


def fhir_requests(response: requests.Response) -> int:
    return int(response.headers["Server-Timing"].split('"')[1].split()[0])


def measure(session, url: str, body: dict, n: int) -> tuple[list[float], set[int]]:
    times, counts = [], set()
    for _ in range(n):
        started = time.perf_counter()
        response = session.post(url, json=body, timeout=10)
        times.append((time.perf_counter() - started) * 1000)
        cards = response.json().get("cards") if response.status_code == 200 else None
        if not cards or "1514" not in cards[0]["summary"]:
            raise SystemExit(f"wrong answer: {response.status_code} {response.text[:200]}")
        counts.add(fhir_requests(response))
    return times, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    full = json.loads(REFERENCE.read_text())
    with tempfile.TemporaryDirectory() as work:
        fhir = SekmetServer(Path(work))
        try:
            fhir.load(json.loads(BUNDLE.read_text()))
            full["fhirServer"] = fhir.base
            full["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer",
                                         "expires_in": 300, "scope": "patient/*.read",
                                         "subject": "cds-service"}
            none = copy.deepcopy(full)
            del none["prefetch"]
            one_missing = copy.deepcopy(full)
            del one_missing["prefetch"]["observations"]
            with ProductionServer(workers=1) as server:
                session = requests.Session()
                url = server.base_url + PATH
                print(f"sekmet-fhir at {fhir.base}; cds-service 1 sync worker; "
                      f"{args.requests} sequential requests per series, 10 warm-up")
                print(f"{'prefetch':<26}{'p50 ms':>9}{'p99 ms':>9}{'FHIR requests/call':>20}")
                for name, body in (("full (baseline)", full), ("observations missing",
                                                               one_missing), ("none", none)):
                    measure(session, url, body, 10)
                    times, counts = measure(session, url, body, args.requests)
                    p99 = statistics.quantiles(times, n=100, method="inclusive")[98]
                    print(f"{name:<26}{statistics.median(times):>9.2f}{p99:>9.2f}"
                          f"{'/'.join(str(c) for c in sorted(counts)):>20}")
        finally:
            fhir.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
