"""Where the time of one hook call goes: cProfile of the app in-process (no server, no HTTP).

Builds the app with `create_app` as the server does (then `gc.collect(); gc.freeze()`, like
`cds-service serve`), sends the benchmark's request through Flask's test client, checks every
answer, and prints the in-process time per call and the top functions by cumulative and by own
time. The clock is fixed at the fixtures' anchor, so the answer does not depend on the date.

    .venv/bin/python bench/profile_hook.py                       # patient-view, 250 resources
    .venv/bin/python bench/profile_hook.py --hook order-sign --size 2000 --calls 100
    .venv/bin/python bench/profile_hook.py --save /tmp/pv250.pstats   # for snakeviz & co.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from requests_builder import HOOKS, ROOT, hook_cases

sys.path.insert(0, str(ROOT))
from cds_service.bootstrap import create_app  # noqa: E402
from cds_service.ops.config import Settings  # noqa: E402

ANCHOR = datetime.fromisoformat(
    json.loads((ROOT / "fixtures" / "manifest.json").read_text())["anchor"].replace("Z", "+00:00")
).astimezone(UTC)
WARMUP = 20


class GcTimer:
    """A gc.callbacks hook: how many collections of each generation, and how long they took."""

    def __init__(self) -> None:
        self.count: dict[int, int] = {}
        self.total_ms = self.longest_ms = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = (time.perf_counter() - self._started) * 1000
        self.count[info["generation"]] = self.count.get(info["generation"], 0) + 1
        self.total_ms += took
        self.longest_ms = max(self.longest_ms, took)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hook", choices=HOOKS, default="patient-view")
    parser.add_argument("--size", type=int, default=250, help="prefetch resources (11 to 2,071)")
    parser.add_argument("--calls", type=int, default=300, help="calls timed, and calls profiled")
    parser.add_argument("--top", type=int, default=15, help="functions listed per table")
    parser.add_argument("--save", type=Path, help="also write the raw pstats file here")
    args = parser.parse_args(argv)
    if not 11 <= args.size <= 2071 or not 1 <= args.calls <= 10_000:
        parser.error("--size must be 11 to 2071 and --calls 1 to 10000")

    (case,) = hook_cases([args.size], hooks=(args.hook,))
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as instance:
        app = create_app(Settings(instance_dir=Path(instance)), clock=lambda: ANCHOR)
        gc.collect()
        gc.freeze()  # as `cds-service serve` does after building the app
        client = app.test_client()

        def call() -> None:
            answer = client.post(case.path, data=case.body, content_type="application/json")
            problem = case.check(answer.status_code, answer.get_data())
            if problem:
                raise SystemExit(f"{case.name}: {problem}")

        for _ in range(WARMUP):
            call()
        collections = GcTimer()
        gc.callbacks.append(collections)
        times = []
        try:
            for _ in range(args.calls):
                started = time.perf_counter()
                call()
                times.append((time.perf_counter() - started) * 1000)
        finally:
            gc.callbacks.remove(collections)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls):
            call()
        profiler.disable()

    cuts = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else times * 99
    print(f"{case.name}: {len(case.body) / 1024:,.1f} KB, {case.resources:,} resources; "
          f"in-process through Flask's test client, clock {ANCHOR:%Y-%m-%d}, gc frozen after "
          f"create_app; {WARMUP} warm-up calls")
    print(f"without the profiler, {args.calls} calls: p50 {cuts[49]:.2f} ms, p99 {cuts[98]:.2f} "
          f"ms, mean {statistics.fmean(times):.2f} ms")
    per_generation = ", ".join(f"gen{g} {n}" for g, n in sorted(collections.count.items()))
    print(f"garbage collection during those calls: {sum(collections.count.values())} collections"
          f" ({per_generation or 'none'}), {collections.total_ms:.1f} ms in all, "
          f"{collections.total_ms / args.calls:.2f} ms per call, longest "
          f"{collections.longest_ms:.2f} ms")
    stats = pstats.Stats(profiler)
    total = sum(t for (_, _, t, _, _) in stats.stats.values())  # type: ignore[attr-defined]
    print(f"with cProfile, {args.calls} calls: {total / args.calls * 1000:.2f} ms of own time "
          f"per call (profiling overhead included)")
    tables = (
        ("cumulative", "cumulative time", ()),
        ("cumulative", "cumulative time, the service's own functions (cds_service/)",
         ("/cds_service/",)),
        ("tottime", "own time", ()),
    )
    for order, title, only in tables:
        out = io.StringIO()
        table_stats = pstats.Stats(profiler, stream=out)
        if not only:
            table_stats.strip_dirs()
        table_stats.sort_stats(order).print_stats(*only, args.top)
        table = out.getvalue().replace(f"{ROOT}/", "")
        print(f"\nTop {args.top} by {title} (times are for all {args.calls} calls):")
        print(table[table.index("   ncalls"):].rstrip())
    if args.save:
        profiler.dump_stats(args.save)
        print(f"\nraw profile written to {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
