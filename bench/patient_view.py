"""Latency of the patient-view service as the prefetch grows, against the production server.

Starts `cds-service serve --workers 1` (granian, one worker) on a free loopback port, then
sends patient-view requests whose prefetch holds about 50, 250 and 2,000 resources, one at a
time from one `requests.Session`. The baseline is GET /cds-services on the same server, measured
the same way, so the ratio shows what the hook itself costs over HTTP + granian + Flask.

The requests are the reference patient's (fixtures/requests/reference-patient-view.json: in
scope, one warning card) padded with Conditions, Procedures and MedicationRequests of the real
Synthea chart (fixtures/synthea/), their `subject` re-pointed to the reference patient so that
they are read as hers and not discarded as another patient's data. Every response must be 200,
and every patient-view response must carry exactly one warning card; otherwise the run fails.

    .venv/bin/python bench/patient_view.py      # (make bench now runs load.py: wrk, both hooks)
    .venv/bin/python bench/patient_view.py --requests 50 --sizes 50,2000

Loopback only; no other network.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import requests
from production_server import HOST, ProductionServer, code_version, port_in_use
from requests_builder import (
    DEFAULT_SIZES,
    SERVICE_PATH,
    Check,
    baseline_case,
    describe,
    hook_cases,
    one_warning_card,
)

LARGE_SIZE = 1000  # sizes at or above this get the smaller default request count
DEFAULT_REQUESTS, DEFAULT_REQUESTS_LARGE = 300, 100
WARMUP = 20
REQUEST_TIMEOUT_S = 10.0  # the largest request takes ~0.1 s; a worker's own timeout is 30 s
MAX_TRANSPORT_ERRORS = 5  # in a row (refused, reset, timed out): the server is gone, give up
PERCENTILE_METHOD = "statistics.quantiles(n=100, method='inclusive')"


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class Series:
    name: str
    resources: int | None
    body_bytes: int
    latencies_ms: list[float]
    elapsed_s: float
    errors: int
    first_error: str | None
    answer: str = ""  # what the last successful response said, for the record

    def quantiles(self) -> list[float]:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")

    @property
    def p50(self) -> float:
        return self.quantiles()[49]

    @property
    def p99(self) -> float:
        return self.quantiles()[98]


def measure(
    name: str,
    send: Callable[[], requests.Response],
    check: Check,
    count: int,
    resources: int | None = None,
    body_bytes: int = 0,
) -> Series:
    """`WARMUP` unmeasured calls, then `count` timed ones, one at a time; checks every answer."""
    errors, first_error, answer, transport_errors = 0, None, "", 0

    def call() -> float | None:
        nonlocal errors, first_error, answer, transport_errors
        started = time.perf_counter()
        try:
            response = send()  # the whole body is read before send() returns (no streaming)
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
            transport_errors += 1
            if transport_errors >= MAX_TRANSPORT_ERRORS:
                raise RuntimeError(
                    f"{name}: {transport_errors} requests in a row got no answer; last: {problem}"
                ) from exc
        else:
            transport_errors = 0
            elapsed_ms = (time.perf_counter() - started) * 1000
            problem = check(response.status_code, response.content)
            if problem is None:
                answer = describe(response.content)
                return elapsed_ms
        errors += 1
        first_error = first_error or problem
        return None

    for _ in range(WARMUP):
        call()
    latencies: list[float] = []
    series_started = time.perf_counter()
    for _ in range(count):
        latency = call()
        if latency is not None:
            latencies.append(latency)
    elapsed = time.perf_counter() - series_started
    return Series(name, resources, body_bytes, latencies, elapsed, errors, first_error, answer)


# -- output -------------------------------------------------------------------------------------
def print_table(rows: list[Series], baseline: Series) -> None:
    header = (
        f"{'request':<26} {'resources':>9} {'body KB':>8} {'n':>5} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'mean ms':>8} {'req/s':>7} {'p50/base':>9} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in [baseline, *rows]:
        if len(row.latencies_ms) < 2:
            print(f"{row.name:<26} too few successful requests to measure ({row.errors} errors)")
            continue
        resources = "-" if row.resources is None else f"{row.resources:,}"
        body_kb = "-" if not row.body_bytes else f"{row.body_bytes / 1024:,.1f}"
        ratio = row.p50 / baseline.p50 if len(baseline.latencies_ms) >= 2 else float("nan")
        print(
            f"{row.name:<26} {resources:>9} {body_kb:>8} {len(row.latencies_ms):>5} "
            f"{row.p50:>8.2f} {row.p99:>8.2f} {statistics.fmean(row.latencies_ms):>8.2f} "
            f"{len(row.latencies_ms) / row.elapsed_s:>7.1f} {ratio:>8.1f}x {row.errors:>6}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        metavar="N",
        help=f"measured requests per size and for the baseline (default {DEFAULT_REQUESTS}; "
        f"{DEFAULT_REQUESTS_LARGE} for sizes of {LARGE_SIZE:,} resources and more)",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="comma-separated prefetch sizes in resources, Patient included (default %(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="loopback port for the server (default: a free one)"
    )
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes integers separated by commas, e.g. 50,250,2000")
    if not args.sizes or any(s < 1 for s in args.sizes):
        parser.error("--sizes must list positive sizes")
    if args.requests is not None and args.requests < 2:
        parser.error("--requests must be at least 2")
    if args.port is not None and not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    return args


def requests_for(size: int, override: int | None) -> int:
    if override is not None:
        return override
    return DEFAULT_REQUESTS_LARGE if size >= LARGE_SIZE else DEFAULT_REQUESTS


def run(args: argparse.Namespace) -> int:
    cases = hook_cases(args.sizes, hooks=("patient-view",))
    if args.port is not None and port_in_use(args.port):
        print(f"port {args.port} on {HOST} is already in use", file=sys.stderr)
        return 2
    print(
        f"client: one requests.Session, sequential; {WARMUP} warm-up requests per series; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code {code_version()}"
    )
    print(
        "\nPatient-view requests (reference patient + Synthea Conditions, Procedures, "
        "MedicationRequests re-pointed to her):"
    )
    for case in cases:
        kinds = ", ".join(f"{case.counts[t]} {t}" for t in sorted(case.counts))
        print(f"  {case.resources:>5,} resources, {len(case.body) / 1024:,.1f} KB: {kinds}")

    finished, baseline, rows = False, None, []
    with ProductionServer(workers=1, port=args.port) as server:
        base = server.base_url
        print(f"\n{' '.join(server.command[1:])} (granian, 1 worker)")
        try:
            with requests.Session() as session:
                print(f"server answered GET /cds-services after {server.ready_s:.1f} s")
                discovery = baseline_case()
                baseline = measure(
                    discovery.name,
                    lambda: session.get(f"{base}{discovery.path}", timeout=REQUEST_TIMEOUT_S),
                    discovery.check,
                    requests_for(0, args.requests),
                )
                headers = {"Content-Type": "application/json"}
                for case in cases:
                    rows.append(
                        measure(
                            case.name,
                            lambda data=case.body: session.post(
                                f"{base}{SERVICE_PATH}",
                                data=data,
                                headers=headers,
                                timeout=REQUEST_TIMEOUT_S,
                            ),
                            one_warning_card,
                            requests_for(case.resources, args.requests),
                            resources=case.resources,
                            body_bytes=len(case.body),
                        )
                    )
                    print(
                        f"  {rows[-1].name}: {len(rows[-1].latencies_ms)} ok, "
                        f"{rows[-1].errors} errors (warm-up included); answer: {rows[-1].answer}",
                        flush=True,
                    )
            finished = True
        finally:
            if not finished or any(s.errors for s in [baseline, *rows] if s):
                sys.stdout.flush()
                print(f"the server's log ends:\n{server.log_tail()}", file=sys.stderr)
    if server.exited_badly:
        print(f"the server exited with code {server.process.returncode}", file=sys.stderr)

    print(
        f"\nLatency per request, client side (send + full response read); percentiles by "
        f"{PERCENTILE_METHOD} over the successful requests; req/s = successful requests / "
        f"wall time of the series (sequential, so about 1000 / mean); errors: failed or wrong "
        f"responses, warm-up included.\n"
    )
    print_table(rows, baseline)
    failed = [s for s in [baseline, *rows] if s.errors]
    if failed:
        print("\nFAILED:", file=sys.stderr)
        for s in failed:
            print(
                f"  {s.name}: {s.errors} errors (warm-up included); first: {s.first_error}",
                file=sys.stderr,
            )
        return 1
    print("\nall responses 200; every patient-view response had exactly one warning card")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the server

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C must reach us even when started from a shell that ignores it (background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; server stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
