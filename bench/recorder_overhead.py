"""What recording shown cards costs a hook call (cds_service/feedback/recorder.py).

1. The listener alone: calls with the real HookResult of the reference patient-view (one
   card) while the background writer inserts into a real SQLite store, as in production.
2. patient-view through the Flask test client, the same app with and without the listener,
   in alternating rounds so that drift affects both alike.

    .venv/bin/python bench/recorder_overhead.py [--calls 20000] [--requests 400]

Local only: no network, a temporary SQLite file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST = ROOT / "fixtures" / "requests" / "reference-patient-view.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def listener_alone(app, calls: int) -> dict:
    from cds_service.bootstrap import service_of
    from cds_service.cdshooks.services import SERVICES
    from cds_service.feedback.recorder import CardRecorder

    engine = service_of(app).engine
    body = json.loads(REQUEST.read_text())
    anchor = datetime(2026, 11, 20, 12, tzinfo=UTC)
    result = engine.run(SERVICES["calciphylaxis-patient-view"], body, anchor)
    recorder = CardRecorder(service_of(app).feedback.store, b"bench", capacity=calls + 1)
    recorder(result)  # start the writer thread
    recorder.flush()
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        recorder(result)
        samples.append((time.perf_counter_ns() - started) / 1000)
    flushed = time.perf_counter()
    recorder.flush(120)
    drain = time.perf_counter() - flushed
    recorder.close()
    return {"calls": calls, "mean_us": statistics.fmean(samples),
            "p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99),
            "max_us": max(samples), "written": recorder.written, "dropped": recorder.dropped,
            "drain_after_last_call_s": drain}


def patient_view(app, requests: int, rounds: int = 8) -> dict:
    from cds_service.bootstrap import service_of

    client = app.test_client()
    body = json.loads(REQUEST.read_text())
    url = "/cds-services/calciphylaxis-patient-view"
    listeners = service_of(app).parts.on_cards_issued
    recorder = listeners[0]
    for _ in range(50):  # warm up
        assert client.post(url, json=body).status_code == 200
    timings: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(rounds):
        for mode in ("without", "with"):
            listeners[:] = [recorder] if mode == "with" else []
            for _ in range(requests // rounds):
                started = time.perf_counter()
                response = client.post(url, json=body)
                timings[mode].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200 and len(response.get_json()["cards"]) == 1
    recorder.flush(60)
    return {mode: {"p50_ms": percentile(t, 0.5), "p95_ms": percentile(t, 0.95),
                   "mean_ms": statistics.fmean(t), "n": len(t)} for mode, t in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=800)
    args = parser.parse_args()
    from cds_service.bootstrap import create_app, service_of
    from cds_service.ops.config import Settings

    with tempfile.TemporaryDirectory() as folder:
        app = create_app(Settings(instance_dir=Path(folder)))
        alone = listener_alone(app, args.calls)
        print(f"listener alone, {alone['calls']} calls (1 card each, writer running): "
              f"mean {alone['mean_us']:.1f} us, p50 {alone['p50_us']:.1f} us, "
              f"p99 {alone['p99_us']:.1f} us, max {alone['max_us']:.0f} us; "
              f"written {alone['written']}, dropped {alone['dropped']}, "
              f"queue drained {alone['drain_after_last_call_s']:.2f} s after the last call")
        view = patient_view(app, args.requests)
        for mode in ("without", "with"):
            v = view[mode]
            print(f"patient-view {mode:>7} recorder: p50 {v['p50_ms']:.2f} ms, "
                  f"p95 {v['p95_ms']:.2f} ms, mean {v['mean_ms']:.2f} ms (n={v['n']})")
        service_of(app).feedback.recorder.close()


if __name__ == "__main__":
    main()
