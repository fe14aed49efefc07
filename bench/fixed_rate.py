"""A fixed-rate (open-loop) loader for the soak run, meant to run in its own process.

wrk has no fixed-rate mode (that is wrk2, which Debian does not package), so the soak uses this:
request i is due at start + i / rate, whatever happened to the requests before it. A scheduler
thread releases each request at its due time to a pool of sender threads (one
`requests.Session` each); when every sender is busy the request waits in the queue, and that
wait is counted in its latency ("from due"), so a stalled server shows up as latency instead of
quietly lowering the rate (no coordinated omission). Every answer is checked like the
benchmark's verification: HTTP 200 and the expected card, not just the status.

    loader = start_loader(cases, mix, base_url, rate=50, seconds=300)   # a child process
    ...                                                                 # sample memory meanwhile
    summary = finish_loader(loader, seconds=300)                        # a plain dict
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import statistics
import threading
import time
from collections.abc import Sequence

import requests
from requests_builder import Case

SENDERS = 8  # threads sending at once: ~8 x the 2,000-resource call time of headroom
REQUEST_TIMEOUT_S = 10.0
FIRST_ERRORS_KEPT = 5
JOIN_GRACE_S = 60.0  # after the last due time, for the requests still in flight


def _send_all(cases: Sequence[Case], mix: Sequence[int], base_url: str, rate: float,
              seconds: float, out: multiprocessing.Queue) -> None:
    """The child process: send rate x seconds requests on schedule, put a summary on `out`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    total = int(rate * seconds)
    work: queue.Queue = queue.Queue()
    records: list[tuple[int, float, float, float, str | None]] = []  # case, due, sent, done, err
    lock = threading.Lock()

    def sender() -> None:
        with requests.Session() as session:
            while (item := work.get()) is not None:
                case_index, due = item
                case = cases[case_index]
                sent = time.perf_counter()
                try:
                    answer = session.request(
                        case.method, base_url + case.path, data=case.body or None,
                        headers={"Content-Type": "application/json"} if case.body else None,
                        timeout=REQUEST_TIMEOUT_S,
                    )
                    problem = case.check(answer.status_code, answer.content)
                except requests.RequestException as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                done = time.perf_counter()
                with lock:
                    records.append((case_index, due, sent, done, problem))

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    start = time.perf_counter() + 0.1
    for i in range(total):
        due = start + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        work.put((mix[i % len(mix)], due))
    for _ in threads:
        work.put(None)
    deadline = time.perf_counter() + JOIN_GRACE_S
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.perf_counter()))
    with lock:
        done_records = list(records)
    out.put(_summarise(cases, done_records, total, start, rate))


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50": float("nan"), "p99": float("nan"), "max": max(values, default=float("nan"))}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p99": cuts[98], "max": max(values)}


def _summarise(cases: Sequence[Case], records: list, total: int, start: float,
               rate: float) -> dict:
    errors = [r for r in records if r[4] is not None]
    ok = [r for r in records if r[4] is None]
    last_done = max((r[3] for r in records), default=start)
    per_case = {}
    for index, case in enumerate(cases):
        mine = [r for r in records if r[0] == index]
        per_case[case.name] = {
            "sent": len(mine),
            "errors": sum(1 for r in mine if r[4] is not None),
            **{f"service_{k}_ms": v for k, v in _quantiles(
                [(r[3] - r[2]) * 1000 for r in mine if r[4] is None]).items()},
        }
    return {
        "scheduled": total,
        "completed": len(records),
        "unanswered": total - len(records),  # still in flight after the grace period
        "ok": len(ok),
        "errors": len(errors) + (total - len(records)),
        "first_errors": [f"{cases[r[0]].name}: {r[4]}" for r in errors[:FIRST_ERRORS_KEPT]],
        "target_rate": rate,
        "achieved_rate": len(records) / (last_done - start) if last_done > start else 0.0,
        "wall_s": last_done - start,
        "max_lag_ms": max(((r[2] - r[1]) * 1000 for r in records), default=0.0),
        "late_over_100ms": sum(1 for r in records if r[2] - r[1] > 0.1),
        "service": _quantiles([(r[3] - r[2]) * 1000 for r in ok]),  # send -> answer read
        "from_due": _quantiles([(r[3] - r[1]) * 1000 for r in ok]),  # due time -> answer read
        "per_case": per_case,
    }


def start_loader(cases: Sequence[Case], mix: Sequence[int], base_url: str, rate: float,
                 seconds: float) -> tuple[multiprocessing.Process, multiprocessing.Queue]:
    # fork: the child gets the request bodies and the check functions without pickling them;
    # the caller forks before it starts any thread of its own.
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    process = context.Process(
        target=_send_all, args=(cases, mix, base_url, rate, seconds, out), name="soak-loader",
        daemon=True,
    )
    process.start()
    return process, out


def finish_loader(loader: tuple[multiprocessing.Process, multiprocessing.Queue],
                  seconds: float) -> dict:
    """Wait (bounded) for the loader's summary; stop the process if it does not give one."""
    process, out = loader
    try:
        summary = out.get(timeout=seconds + JOIN_GRACE_S + 30)
    except queue.Empty:
        summary = None
    process.join(timeout=10)
    if process.is_alive():
        process.terminate()
        process.join(timeout=5)
    if summary is None:
        raise RuntimeError(f"the soak loader gave no result (exit code {process.exitcode})")
    return summary
