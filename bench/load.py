"""Load benchmark of the production server: latency, throughput and a soak run.

    .venv/bin/python bench/load.py                 # make bench: the full comparison (~3-5 min)
    .venv/bin/python bench/load.py --soak 300      # make soak: 5 minutes at a fixed rate

The comparison starts `cds-service serve` (--server: serve's default unless told) twice on a
free loopback port: with 1 worker, where wrk sends one request at a time over 1 connection (one
EHR: the per-call latency), then with 2 workers, where wrk keeps 4 connections busy (the
capacity of the 2 cores); then the server before issue 12 (gunicorn sync workers alone,
bench/gunicorn_sync.py) with 2 workers the same way, and prints the two servers' throughput side
by side (--no-baseline-server to skip it).
Each time it measures the baseline GET /cds-services, then patient-view and order-sign with 50,
250 and 2,000 prefetch resources (bench/requests_builder.py), and prints p50, p99 and req/s
beside the baseline's, as ratios. Every kind of request is first sent and checked in full from
Python (HTTP 200 and the expected warning card), then loaded with wrk, whose Lua script times
and checks every answer (bench/wrk_runner.py), then checked again. The machine is shared: a run
during which other processes used more than 10% of the CPU is repeated (--busy-retries).

The soak starts the server with 2 workers and sends a fixed mix of all those requests at a fixed
rate from a separate process (bench/fixed_rate.py) for the given time; it requires zero errors
and worker memory (VmRSS) that does not grow more than --max-rss-growth percent, and prints the
RSS of the server's main process and workers at start, along the way, and at the end.

Loopback only. Exit code 0 when every answer was right (and, for the soak, memory stayed flat);
1 otherwise; 2 for a bad option or a port in use.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
from fixed_rate import finish_loader, start_loader
from production_server import CpuShare, ProductionServer, code_version, port_in_use
from requests_builder import DEFAULT_SIZES, Case, baseline_case, describe, hook_cases
from wrk_runner import WrkMissing, WrkResult, run_wrk, write_script, wrk_path, wrk_version

from cds_service.cli import DEFAULT_SERVER
from cds_service.cli import SERVERS as SERVE_SERVERS

VERIFY_BEFORE = 20  # checked requests before each load run (they also warm the worker up)
VERIFY_AFTER = 3  # and after it: the server still answers right
PERCENTILE_METHOD = "statistics.quantiles(n=100, method='inclusive')"
BUSY_PCT = 10.0  # other processes' share of the CPU above which a run is tried again
LARGE_SIZE = 1000  # runs at or above this size last twice as long (fewer, slower requests)
REQUEST_TIMEOUT_S = 10.0
SOAK_SAMPLES = 10  # RSS samples along the soak, besides start and end
MAX_LATE_PCT = 1.0  # of the soak's requests may leave more than 100 ms after their due time
SOAK_WARMUP_S = 30.0  # the "start" RSS is taken after this much load (or a tenth of the soak)
# Soak mix: how often each request comes in one round (the rest of the sizes: once each).
SOAK_WEIGHTS = {
    "POST patient-view 250": 8,
    "POST order-sign 250": 4,
    "POST patient-view 50": 3,
    "POST order-sign 50": 2,
}
# The targets, for the 250-resource patient-view (~200 KB prefetch) and the 2,000 chart.
TARGET_P50_MS, TARGET_P99_MS, TARGET_RPS, TARGET_LARGE_MS = 5.0, 20.0, 300.0, 50.0


@dataclass
class Phase:
    title: str
    workers: int
    connections: int  # and as many wrk threads: each times its one request in flight
    server: str = "granian"


@dataclass
class Row:
    case: Case
    result: WrkResult  # the attempt kept: the one during which other processes used least CPU
    check_errors: int
    first_error: str | None
    answer: str
    cpu: CpuShare
    attempts: int = 1
    discarded_errors: int = 0  # wrk errors in the attempts not kept: they count too

    @property
    def errors(self) -> int:
        return self.result.errors + self.check_errors + self.discarded_errors


# -- checking answers from Python ---------------------------------------------------------------
def verify(session: requests.Session, base_url: str, case: Case, count: int
           ) -> tuple[int, str | None, str]:
    """Send `case` `count` times, one at a time; (errors, first problem, last good answer)."""
    errors, first, answer, unanswered = 0, None, "", 0
    for _ in range(count):
        try:
            response = session.request(
                case.method, base_url + case.path, data=case.body or None,
                headers={"Content-Type": "application/json"} if case.body else None,
                timeout=REQUEST_TIMEOUT_S,
            )
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
            unanswered += 1
        else:
            problem = case.check(response.status_code, response.content)
            if problem is None:
                answer = describe(response.content)
        if problem is not None:
            errors += 1
            first = first or problem
            if unanswered >= 3:
                raise RuntimeError(f"{case.name}: the server stopped answering: {problem}")
    return errors, first, answer


# -- the comparison -----------------------------------------------------------------------------
def run_phase(phase: Phase, cases: list[Case], args: argparse.Namespace, folder: Path
              ) -> list[Row]:
    print(f"\n{phase.title}", flush=True)
    rows = []
    with ProductionServer(workers=phase.workers, port=args.port, kind=phase.server) as server, \
            requests.Session() as session:
        print(f"  {' '.join(server.command[1:])}: ready after {server.ready_s:.1f} s", flush=True)
        for index, case in enumerate(cases):
            errors, first, answer = verify(session, server.base_url, case, VERIFY_BEFORE)
            if errors == VERIFY_BEFORE:
                raise RuntimeError(f"{case.name}: every check failed; first: {first}\n"
                                   f"server log ends:\n{server.log_tail()}")
            seconds = args.duration * (2 if (case.resources or 0) >= LARGE_SIZE else 1)
            script = write_script(folder, f"case{index}", case.method, case.body, case.markers)
            attempts: list[tuple[WrkResult, CpuShare]] = []
            for _ in range(1 + args.busy_retries):  # bounded: again only if the machine was busy
                cpu = CpuShare(server)
                result = run_wrk(server.base_url + case.path, script, phase.connections, seconds)
                cpu.stop()
                attempts.append((result, cpu))
                print(f"  {case.name}: {result.requests:,} requests in {result.duration_s:.1f} s,"
                      f" {result.errors} wrk errors; CPU: server {cpu.server_pct:.0f}%, wrk "
                      f"{cpu.bench_pct:.0f}%, other processes {cpu.others_pct:.0f}%; "
                      f"{cpu.restarted} workers recycled", flush=True)
                if cpu.others_pct <= BUSY_PCT:
                    break
            result, cpu = min(attempts, key=lambda attempt: attempt[1].others_pct)
            after, first_after, _ = verify(session, server.base_url, case, VERIFY_AFTER)
            row = Row(case, result, errors + after, first or first_after, answer, cpu,
                      len(attempts), sum(r.errors for r, _ in attempts) - result.errors)
            rows.append(row)
            print(f"    kept the run with {cpu.others_pct:.0f}% other CPU; answer: {answer}",
                  flush=True)
            if row.errors:
                print(f"    first error: {row.first_error or result.first_bad}; wrk saw "
                      f"{result.bad_status} non-200, {result.bad_body} wrong bodies, socket "
                      f"errors {result.socket_errors}", flush=True)
        if server.exited_badly or not server.alive():
            raise RuntimeError(f"the server died during the run; its log ends:\n"
                               f"{server.log_tail()}")
    return rows


def print_table(rows: list[Row]) -> None:
    base = rows[0].result
    header = (f"{'request':<26} {'resources':>9} {'body KB':>8} {'requests':>8} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'req/s':>7} {'p50 xbase':>9} {'p99 xbase':>9} "
              f"{'req/s xbase':>11} {'errors':>6} {'wrk p99':>7} {'other CPU':>9} "
              f"{'recycled':>8} {'runs':>4}")
    print(header)
    print("-" * len(header))
    for row in rows:
        r = row.result
        resources = "-" if row.case.resources is None else f"{row.case.resources:,}"
        body_kb = f"{len(row.case.body) / 1024:,.1f}" if row.case.body else "-"
        print(f"{row.case.name:<26} {resources:>9} {body_kb:>8} {r.requests:>8,} "
              f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.req_per_s:>7.1f} "
              f"{r.p50_ms / base.p50_ms:>8.1f}x {r.p99_ms / base.p99_ms:>8.1f}x "
              f"{r.req_per_s / base.req_per_s:>10.3f}x {row.errors:>6} {r.wrk_p99_ms:>7.2f} "
              f"{row.cpu.others_pct:>8.0f}% {row.cpu.restarted:>8} {row.attempts:>4}")


def print_targets(latency: list[Row], throughput: list[Row]) -> None:
    def find(rows: list[Row], name: str) -> WrkResult | None:
        return next((r.result for r in rows if r.case.name == name), None)

    checks = []
    if (pv := find(latency, "POST patient-view 250")) is not None:
        checks += [("patient-view 250, 1 worker, p50", pv.p50_ms, "ms", "<=", TARGET_P50_MS),
                   ("patient-view 250, 1 worker, p99", pv.p99_ms, "ms", "<=", TARGET_P99_MS)]
    if (pv := find(throughput, "POST patient-view 250")) is not None:
        checks.append(("patient-view 250, 2 workers, req/s", pv.req_per_s, "req/s", ">=",
                       TARGET_RPS))
    if (pv := find(latency, "POST patient-view 2,000")) is not None:
        checks.append(("patient-view 2,000, 1 worker, p50", pv.p50_ms, "ms", "<",
                       TARGET_LARGE_MS))
    if not checks:
        return
    print("\nTargets (informational; the exit code only reflects errors):")
    for label, value, unit, op, target in checks:
        met = value <= target if op == "<=" else value >= target if op == ">=" else value < target
        print(f"  {label:<38} {value:>8.2f} {unit:<5} target {op} {target:g} {unit:<5} "
              f"{'met' if met else 'NOT MET'}")


def run_comparison(args: argparse.Namespace) -> int:
    try:
        wrk_path()
    except WrkMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cases = [baseline_case(), *hook_cases(args.sizes)]
    print_header(cases, f"load generator: {wrk_version()}, {args.duration} s per run "
                        f"({2 * args.duration} s from {LARGE_SIZE:,} resources), run again up "
                        f"to {args.busy_retries} times when other processes took more than "
                        f"{BUSY_PCT:g}% of the CPU")
    phases = [
        Phase(f"1. Per-call latency: cds-service serve --server {args.server}, 1 worker; wrk "
              "--threads=1 --connections=1 (one EHR, one call at a time)", 1, 1, args.server),
        Phase(f"2. Throughput: cds-service serve --server {args.server}, 2 workers; wrk "
              f"--threads={args.connections} --connections={args.connections}", 2,
              args.connections, args.server),
    ]
    if args.baseline_server:
        phases.append(Phase(
            f"3. Throughput of the server before issue 12: gunicorn, 2 sync workers "
            f"(bench/gunicorn_sync.py); wrk --threads={args.connections} "
            f"--connections={args.connections}", 2, args.connections, "gunicorn-sync"))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        for phase in phases:
            results.append(run_phase(phase, cases, args, Path(folder)))

    print(f"""
How to read the tables:
- p50 ms, p99 ms: latency of each request, timed by wrk's Lua script from handing wrk the request
  to the whole response read (connection set-up excluded: both servers close the connection
  after each answer and wrk reconnects), percentiles by {PERCENTILE_METHOD}.
- wrk p99: wrk's own p99 (what --latency prints), which adds synthetic samples for requests slower
  than twice the mean interval (its coordinated-omission correction): a rare stall weighs more.
- req/s: requests / run time. xbase: the figure divided by the same figure of GET /cds-services
  in the same phase (same server, same run).
- errors: answers other than 200, bodies without the expected card (checked by the Lua script on
  every response), socket errors, and wrong answers among the {VERIFY_BEFORE} + {VERIFY_AFTER} \
requests
  checked from Python (full JSON) around each run.
- wrk and the server share the machine's {os.cpu_count()} cores: in phase 2 wrk's CPU time is \
taken
  from the workers. other CPU: CPU time of the processes other than the server, wrk and this
  script during the run, in % of all cores; above a few %, the row's figures are pessimistic.
- recycled: workers replaced during the run (gunicorn: max_requests, after 10,000-11,000
  requests each; granian: only a crashed, stuck or oversized worker).
- runs: a kind of request is run again (--busy-retries, {args.busy_retries}) when other \
processes took
  more than {BUSY_PCT:g}% of the CPU during its run; the run with the least is shown, errors of
  every run count.""")
    for phase, rows in zip(phases, results, strict=True):
        print(f"\n{phase.title}\n")
        print_table(rows)
    print_targets(results[0], results[1])
    if args.baseline_server:
        print_side_by_side(args.server, results[1], results[2])
    failed = [row for rows in results for row in rows if row.errors]
    if failed:
        print("\nFAILED:", file=sys.stderr)
        for row in failed:
            print(f"  {row.case.name}: {row.errors} errors; first: "
                  f"{row.first_error or row.result.first_bad}; wrk saw {row.result.bad_status} "
                  f"non-200, {row.result.bad_body} wrong bodies, socket errors "
                  f"{row.result.socket_errors}", file=sys.stderr)
        return 1
    print("\nno errors: every checked answer was 200 with the expected card; wrk saw no non-2xx "
          "and no socket errors")
    return 0


def print_side_by_side(server: str, now: list[Row], before: list[Row]) -> None:
    print(f"\nThroughput side by side, same run, 2 workers ({server} = cds-service serve "
          f"--server {server}; gunicorn = gunicorn sync alone, before issue 12):\n")
    header = (f"{'request':<26} {server + ' req/s':>13} {'gunicorn req/s':>14} {'ratio':>6} "
              f"{server + ' p99':>11} {'gunicorn p99':>12}")
    print(header)
    print("-" * len(header))
    for row, base in zip(now, before, strict=True):
        a, b = row.result, base.result
        print(f"{row.case.name:<26} {a.req_per_s:>13.1f} {b.req_per_s:>14.1f} "
              f"{a.req_per_s / b.req_per_s:>5.2f}x {a.p99_ms:>9.2f}ms {b.p99_ms:>10.2f}ms")


def print_header(cases: list[Case], load_line: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code {code_version()}; Python "
          f"{platform.python_version()}; {os.cpu_count()} CPUs; loopback 127.0.0.1; "
          f"development mode")
    print(load_line)
    print("\nRequests (reference patient + Synthea Conditions, Procedures, MedicationRequests "
          "re-pointed to her; order-sign drafts calcium acetate):")
    for case in cases:
        if case.body:
            kinds = ", ".join(f"{case.counts[t]} {t}" for t in sorted(case.counts))
            print(f"  {case.name:<26} {len(case.body) / 1024:>8,.1f} KB: {kinds}")


# -- the soak -----------------------------------------------------------------------------------
def soak_mix(cases: list[Case]) -> list[int]:
    """One round of the soak's requests, interleaved (smooth weighted round-robin)."""
    weights = [SOAK_WEIGHTS.get(case.name, 1) for case in cases]
    current = [0] * len(cases)
    mix = []
    for _ in range(sum(weights)):
        current = [c + w for c, w in zip(current, weights, strict=True)]
        chosen = max(range(len(cases)), key=lambda i: current[i])
        current[chosen] -= sum(weights)
        mix.append(chosen)
    return mix


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def rss_line(label: str, rss: dict[int, int], master: int) -> str:
    workers = {pid: kb for pid, kb in rss.items() if pid != master}
    parts = ", ".join(f"worker {pid} {mib(kb)}" for pid, kb in workers.items())
    return (f"  {label:<22} master {mib(rss.get(master, 0))}, {parts}; workers total "
            f"{mib(sum(workers.values()))} MiB")


def run_soak(args: argparse.Namespace) -> int:
    seconds = args.soak
    cases = [baseline_case(), *hook_cases(args.sizes)]
    mix = soak_mix(cases)
    print_header(cases, f"soak: {seconds} s at a fixed {args.rate:g} req/s (open loop, "
                        f"bench/fixed_rate.py in its own process), 2 workers, --server "
                        f"{args.server}")
    round_text = ", ".join(f"{mix.count(i)} x {case.name.removeprefix('POST ')}"
                           for i, case in enumerate(cases))
    print(f"one round of {len(mix)} requests: {round_text}")
    problems: list[str] = []
    with ProductionServer(workers=2, port=args.port, kind=args.server) as server, \
            requests.Session() as session:
        master = server.master_pid
        print(f"\n{' '.join(server.command[1:])}: ready after {server.ready_s:.1f} s")
        for case in cases:
            errors, first, _ = verify(session, server.base_url, case, 5)
            if errors:
                problems.append(f"before the soak, {case.name}: {errors} errors; first: {first}")
        if problems:
            raise RuntimeError("; ".join(problems) + f"\nserver log ends:\n{server.log_tail()}")
        print("\nRSS (VmRSS, MiB) of the main process and workers:")
        first_rss = server.rss_kb()
        print(rss_line("before the soak", first_rss, master), flush=True)

        cpu = CpuShare(server)
        loader = start_loader(cases, mix, server.base_url, args.rate, seconds)
        started = time.monotonic()
        warmup = min(SOAK_WARMUP_S, seconds / 10)
        interval = (seconds - warmup) / SOAK_SAMPLES
        samples = [(warmup, "start (after warm-up)")] + [
            (warmup + interval * k, f"at {warmup + interval * k:.0f} s")
            for k in range(1, SOAK_SAMPLES)
        ]
        start_rss = first_rss
        for at, label in samples:  # bounded: SOAK_SAMPLES samples
            time.sleep(max(0.0, started + at - time.monotonic()))
            if not loader[0].is_alive():
                break
            rss = server.rss_kb()
            if label.startswith("start"):
                start_rss = rss
            print(rss_line(label, rss, master), flush=True)
        summary = finish_loader(loader, seconds)
        cpu.stop()
        end_rss = server.rss_kb()
        print(rss_line(f"end ({time.monotonic() - started:.0f} s)", end_rss, master), flush=True)
        for case in cases:
            errors, first, _ = verify(session, server.base_url, case, 3)
            if errors:
                problems.append(f"after the soak, {case.name}: {errors} errors; first: {first}")
        if not server.alive():
            problems.append("the server died during the soak")
        log_tail = server.log_tail()

    show_log = bool(problems) or summary["errors"] > 0  # errors, not rate or memory
    print_soak_summary(summary)
    print(f"CPU over the soak, in % of all {os.cpu_count()} cores: server {cpu.server_pct:.0f}%, "
          f"loader {cpu.bench_pct:.0f}%, other processes {cpu.others_pct:.0f}%")
    problems += [f"load: {e}" for e in summary["first_errors"]]
    late_pct = 100 * summary["late_over_100ms"] / max(1, summary["scheduled"])
    if late_pct > MAX_LATE_PCT:
        problems.append(f"the rate was not held: {late_pct:.1f}% of the requests were sent more "
                        f"than 100 ms late (limit {MAX_LATE_PCT:g}%); other processes took "
                        f"{cpu.others_pct:.0f}% of the CPU")
    if summary["errors"]:
        problems.insert(0, f"{summary['errors']} errors among {summary['scheduled']:,} requests "
                           f"({summary['unanswered']} unanswered)")
    problems += memory_problems(start_rss, end_rss, master, args.max_rss_growth)
    if problems:
        print("\nFAILED:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if show_log:
            print(f"server log ends:\n{log_tail}", file=sys.stderr)
        return 1
    print(f"\nsoak passed: zero errors, the rate held, worker RSS within "
          f"{args.max_rss_growth:g}% of its start")
    return 0


def memory_problems(start: dict[int, int], end: dict[int, int], master: int,
                    max_growth: float) -> list[str]:
    start_workers = {p: kb for p, kb in start.items() if p != master}
    end_workers = {p: kb for p, kb in end.items() if p != master}
    problems = []
    if set(start_workers) != set(end_workers):
        print(f"  workers were replaced during the soak (over workers_max_rss?): "
              f"{sorted(start_workers)} -> {sorted(end_workers)}; comparing their totals")
    total_start, total_end = sum(start_workers.values()), sum(end_workers.values())
    growth = 100 * (total_end - total_start) / total_start if total_start else 0.0
    print(f"\nworker RSS from start (after warm-up) to end: {mib(total_start)} -> "
          f"{mib(total_end)} MiB ({growth:+.1f}%); limit +{max_growth:g}%")
    if growth > max_growth:
        problems.append(f"worker RSS grew {growth:+.1f}% (limit {max_growth:g}%)")
    for pid in sorted(set(start_workers) & set(end_workers)):
        one = 100 * (end_workers[pid] - start_workers[pid]) / start_workers[pid]
        if one > max_growth:
            problems.append(f"worker {pid} RSS grew {one:+.1f}% (limit {max_growth:g}%)")
    return problems


def print_soak_summary(s: dict) -> None:
    print(f"\nsoak: {s['completed']:,} of {s['scheduled']:,} requests answered in "
          f"{s['wall_s']:.1f} s = {s['achieved_rate']:.1f} req/s (target {s['target_rate']:g}); "
          f"{s['errors']} errors; {s['late_over_100ms']} sent more than 100 ms after their due "
          f"time (max {s['max_lag_ms']:.1f} ms)")
    for label, key in (("send -> answer read", "service"), ("due time -> answer read",
                                                            "from_due")):
        q = s[key]
        print(f"  latency {label:<24} p50 {q['p50']:7.2f} ms  p99 {q['p99']:7.2f} ms  "
              f"max {q['max']:7.2f} ms")
    header = (f"  {'request':<26} {'sent':>7} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7}")
    print(f"\n{header}\n  {'-' * (len(header) - 2)}")
    for name, c in s["per_case"].items():
        print(f"  {name:<26} {c['sent']:>7,} {c['errors']:>6} {c['service_p50_ms']:>7.2f} "
              f"{c['service_p99_ms']:>7.2f} {c['service_max_ms']:>7.2f}")


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, metavar="S",
                        help="seconds of wrk load per request kind and phase (doubled from "
                             f"{LARGE_SIZE:,} resources; default %(default)s)")
    parser.add_argument("--busy-retries", type=int, default=2, metavar="N",
                        help=f"run a kind of request again, up to N times, when other processes "
                             f"used more than {BUSY_PCT:g}%% of the CPU during its run; the run "
                             f"with the least is kept (default %(default)s)")
    parser.add_argument("--connections", type=int, default=4,
                        help="wrk connections in the throughput phase (default %(default)s)")
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES),
                        help="prefetch sizes in resources, Patient included, 11 to 2,071 "
                             "(default %(default)s)")
    parser.add_argument("--soak", type=int, default=None, metavar="SECONDS",
                        help="run the soak for this long instead of the comparison "
                             "(make soak: 300)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="soak: requests per second (default %(default)s)")
    parser.add_argument("--max-rss-growth", type=float, default=20.0, metavar="PERCENT",
                        help="soak: allowed growth of the workers' RSS (default %(default)s)")
    parser.add_argument("--no-baseline-server", dest="baseline_server", action="store_false",
                        help="skip the throughput run of the server before issue 12 (gunicorn "
                             "sync workers)")
    parser.add_argument("--server", choices=SERVE_SERVERS, default=DEFAULT_SERVER,
                        help="the server of cds-service serve (default: serve's, %(default)s)")
    parser.add_argument("--port", type=int, default=None,
                        help="loopback port for the server (default: a free one)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes integers separated by commas, e.g. 50,250,2000")
    if not args.sizes or any(s < 11 or s > 2071 for s in args.sizes):
        parser.error("--sizes must be between 11 and 2071")
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be 1 to 600 seconds")
    if not 0 <= args.busy_retries <= 10:
        parser.error("--busy-retries must be 0 to 10")
    if not 1 <= args.connections <= 256:
        parser.error("--connections must be 1 to 256")
    if args.soak is not None and not 10 <= args.soak <= 24 * 3600:
        parser.error("--soak must be 10 seconds to 24 hours")
    if not 0.1 <= args.rate <= 1000:
        parser.error("--rate must be 0.1 to 1000 requests per second")
    if args.port is not None:
        if not 0 < args.port < 65536:
            parser.error("--port must be between 1 and 65535")
        if port_in_use(args.port):
            parser.error(f"port {args.port} is already in use")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through the `with`, which stops the server

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C must reach us even when started from a shell that ignores it (background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_soak(args) if args.soak is not None else run_comparison(args)
    except KeyboardInterrupt:
        print("\ninterrupted; server stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
