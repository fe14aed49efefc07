"""Latency of the patient-view service as the prefetch grows, against the production server.

Starts `cds-service serve --workers 1` (gunicorn, one sync worker) on a free loopback port, then
sends patient-view requests whose prefetch holds about 50, 250 and 2,000 resources, one at a
time from one `requests.Session`. The baseline is GET /cds-services on the same server, measured
the same way, so the ratio shows what the hook itself costs over HTTP + gunicorn + Flask.

The requests are the reference patient's (fixtures/requests/reference-patient-view.json: in
scope, one warning card) padded with Conditions, Procedures and MedicationRequests of the real
Synthea chart (fixtures/synthea/), their `subject` re-pointed to the reference patient so that
they are read as hers and not discarded as another patient's data. Every response must be 200,
and every patient-view response must carry exactly one warning card; otherwise the run fails.

    .venv/bin/python bench/patient_view.py                     # or: make bench
    .venv/bin/python bench/patient_view.py --requests 50 --sizes 50,2000

Loopback only; no other network.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
from synthea_request import FHIR_BASE, load_synthea_resources  # noqa: E402

CDS_SERVICE = ROOT / ".venv" / "bin" / "cds-service"
REFERENCE_REQUEST = ROOT / "fixtures" / "requests" / "reference-patient-view.json"
SERVICE_PATH = "/cds-services/calciphylaxis-patient-view"
HOST = "127.0.0.1"
# Padding comes from these Synthea types, into these prefetch Bundles.
PADDING_KEYS = {
    "Condition": "conditions",
    "Procedure": "procedures",
    "MedicationRequest": "medications",
}
DEFAULT_SIZES = (50, 250, 2000)
LARGE_SIZE = 1000  # sizes at or above this get the smaller default request count
DEFAULT_REQUESTS, DEFAULT_REQUESTS_LARGE = 300, 100
WARMUP = 20
STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 10.0  # the largest request takes ~0.1 s; gunicorn's own timeout is 30 s
MAX_TRANSPORT_ERRORS = 5  # in a row (refused, reset, timed out): the server is gone, give up
PERCENTILE_METHOD = "statistics.quantiles(n=100, method='inclusive')"


# -- requests to send ---------------------------------------------------------------------------
def count_resources(body: dict) -> Counter:
    """Resources in the prefetch by type (the Patient plus every Bundle entry)."""
    counts: Counter = Counter()
    for value in body["prefetch"].values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            counts.update(e["resource"]["resourceType"] for e in value.get("entry", ()))
        else:
            counts[value["resourceType"]] += 1
    return counts


def _proportional(available: dict[str, int], wanted: int) -> dict[str, int]:
    """Split `wanted` over the types in proportion to what Synthea has (largest remainder)."""
    total = sum(available.values())
    exact = {t: wanted * n / total for t, n in available.items()}
    share = {t: int(x) for t, x in exact.items()}
    for t in sorted(exact, key=lambda t: exact[t] - share[t], reverse=True)[
        : wanted - sum(share.values())
    ]:
        share[t] += 1
    return share


def padded_request(reference: dict, synthea: tuple[dict, ...], size: int) -> dict:
    """The reference request with Synthea resources added until the prefetch holds `size`."""
    body = copy.deepcopy(reference)
    patient_ref = f"Patient/{body['context']['patientId']}"
    missing = size - sum(count_resources(body).values())
    by_type: dict[str, list[dict]] = {t: [] for t in PADDING_KEYS}
    for resource in synthea:  # the file's order (sorted by id): a mix of years and kinds
        if resource["resourceType"] in by_type:
            by_type[resource["resourceType"]].append(resource)
    available = {t: len(rs) for t, rs in by_type.items()}
    if missing < 0 or missing > sum(available.values()):
        raise SystemExit(
            f"size {size}: the reference has {size - missing} resources and "
            f"Synthea offers {sum(available.values())} more; choose another size"
        )
    for rtype, n in _proportional(available, missing).items():
        bundle = body["prefetch"][PADDING_KEYS[rtype]]
        entries = bundle.setdefault("entry", [])
        for original in by_type[rtype][:n]:
            resource = copy.deepcopy(original)
            resource["subject"] = {"reference": patient_ref}
            entries.append(
                {
                    "fullUrl": f"{FHIR_BASE}/{rtype}/{resource['id']}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
            )
        bundle["total"] = sum(1 for e in entries if e.get("search", {}).get("mode") == "match")
    counts = count_resources(body)
    assert sum(counts.values()) == size, counts
    return body


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) == 0


def start_server(port: int, log_file) -> subprocess.Popen:
    command = [str(CDS_SERVICE), "serve", "--host", HOST, "--port", str(port), "--workers", "1"]
    # Own session: a Ctrl-C in the terminal reaches only us, and we stop the server in order.
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_until_ready(server: subprocess.Popen, session: requests.Session, base: str) -> float:
    started = time.perf_counter()
    deadline = started + STARTUP_TIMEOUT_S
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} while starting")
        try:
            if session.get(f"{base}/cds-services", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer GET /cds-services in {STARTUP_TIMEOUT_S:.0f} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    server.terminate()  # SIGTERM to the gunicorn master: graceful stop of its worker
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)


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


def one_warning_card(response: requests.Response) -> str | None:
    """None if the patient-view answer is right, else what is wrong with it."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    cards = response.json().get("cards")
    if not isinstance(cards, list) or len(cards) != 1 or cards[0].get("indicator") != "warning":
        return "expected exactly one warning card, got " + json.dumps(
            [c.get("indicator") for c in cards] if isinstance(cards, list) else cards
        )
    return None


def describe(response: requests.Response) -> str:
    body = response.json()
    if "cards" in body:
        return "; ".join(f"[{c.get('indicator')}] {c.get('summary')}" for c in body["cards"])
    return f"{len(body.get('services', []))} services"


def discovery_ok(response: requests.Response) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if not response.json().get("services"):
        return "discovery lists no services"
    return None


def measure(
    name: str,
    send: Callable[[], requests.Response],
    check: Callable[[requests.Response], str | None],
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
            try:
                problem = check(response)
            except ValueError as exc:  # not JSON
                problem = f"unreadable response: {exc}"
            if problem is None:
                answer = describe(response)
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
def code_version() -> str:
    """The commit being measured, and whether the service's code has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cds_service", "cards"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return commit.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


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
    reference = json.loads(REFERENCE_REQUEST.read_text(encoding="utf-8"))
    synthea = load_synthea_resources()
    bodies: list[tuple[int, bytes, Counter]] = []
    for size in args.sizes:
        body = padded_request(reference, synthea, size)
        bodies.append((size, json.dumps(body).encode(), count_resources(body)))

    port = args.port or free_port()
    if port_in_use(port):
        print(f"port {port} on {HOST} is already in use", file=sys.stderr)
        return 2
    base = f"http://{HOST}:{port}"
    print(f"cds-service serve --host {HOST} --port {port} --workers 1 (gunicorn, 1 sync worker)")
    print(
        f"client: one requests.Session, sequential; {WARMUP} warm-up requests per series; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code {code_version()}"
    )
    print(
        "\nPatient-view requests (reference patient + Synthea Conditions, Procedures, "
        "MedicationRequests re-pointed to her):"
    )
    for _size, data, counts in bodies:
        kinds = ", ".join(f"{counts[t]} {t}" for t in sorted(counts))
        print(f"  {sum(counts.values()):>5,} resources, {len(data) / 1024:,.1f} KB: {kinds}")

    with tempfile.TemporaryFile(mode="w+b") as log_file:
        server = start_server(port, log_file)
        finished, baseline, rows = False, None, []
        try:
            with requests.Session() as session:
                ready_s = wait_until_ready(server, session, base)
                print(f"\nserver answered GET /cds-services after {ready_s:.1f} s")
                baseline = measure(
                    "GET /cds-services (base)",
                    lambda: session.get(f"{base}/cds-services", timeout=REQUEST_TIMEOUT_S),
                    discovery_ok,
                    requests_for(0, args.requests),
                )
                headers = {"Content-Type": "application/json"}
                for size, data, counts in bodies:
                    rows.append(
                        measure(
                            f"POST patient-view {size:,}",
                            lambda data=data: session.post(
                                f"{base}{SERVICE_PATH}",
                                data=data,
                                headers=headers,
                                timeout=REQUEST_TIMEOUT_S,
                            ),
                            one_warning_card,
                            requests_for(size, args.requests),
                            resources=sum(counts.values()),
                            body_bytes=len(data),
                        )
                    )
                    print(
                        f"  {rows[-1].name}: {len(rows[-1].latencies_ms)} ok, "
                        f"{rows[-1].errors} errors (warm-up included); answer: {rows[-1].answer}",
                        flush=True,
                    )
            finished = True
        finally:
            stop_server(server)
            exited_badly = server.returncode not in (0, -signal.SIGTERM)
            if exited_badly or not finished or any(s.errors for s in [baseline, *rows] if s):
                sys.stdout.flush()
                log_file.seek(0)
                tail = log_file.read().decode(errors="replace").splitlines()[-20:]
                print(f"server exit code {server.returncode}; its log ends:", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

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
