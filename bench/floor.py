"""The service beside its floor: the same patient-view body, the same gunicorn sync workers.

    .venv/bin/python bench/floor.py                  # make bench-floor (~2 min)
    .venv/bin/python bench/floor.py --rounds 1 --duration 5
    .venv/bin/python bench/floor.py --cds-service /other/checkout/.venv/bin/cds-service

The floor is bench/floor_app.py: a Flask app that only decodes the body (gunicorn, 2 sync
workers). The service is `cds-service serve --workers 2` (preloaded, warmed, gc.freeze). Both
get the reference patient-view padded to 223 resources with a month of dialysis Encounters and
IV paricalcitol doses (the new prefetch keys filled; bench/requests_builder.floor_request).
For each, wrk measures p50/p99 at 1 connection (one EHR) and req/s at 8 connections (the two
cores saturated); rounds alternate floor and service so that both see the same machine, and the
medians of the rounds are printed, with the service's throughput as a share of the floor's.
`--cds-service` measures another checkout's command with the same body (a before/after).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import requests
from production_server import HOST, ROOT, ProductionServer, code_version, free_port
from requests_builder import SERVICE_PATH, count_resources, floor_request, one_warning_card
from wrk_runner import run_wrk, write_script, wrk_path

GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
BENCH = Path(__file__).resolve().parent


class FloorServer:
    """gunicorn serving floor_app with sync workers, like `cds-service serve`."""

    def __init__(self, workers: int = 2):
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.workers = workers
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> FloorServer:
        self.process = subprocess.Popen(
            [str(GUNICORN), "--workers", str(self.workers), "--worker-class", "sync",
             "--bind", f"{HOST}:{self.port}", "--preload", "--log-level", "warning",
             "floor_app:app"], cwd=BENCH, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.post(f"{self.base_url}{SERVICE_PATH}", data=b"{}", timeout=2)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("the floor server did not start")

    def __exit__(self, *exc_info) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)


def measure(base_url: str, script: Path, duration: int) -> tuple[float, float, float, int]:
    one = run_wrk(f"{base_url}{SERVICE_PATH}", script, 1, duration)
    eight = run_wrk(f"{base_url}{SERVICE_PATH}", script, 8, duration)
    return one.p50_ms, one.p99_ms, eight.req_per_s, one.errors + eight.errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--cds-service", type=Path, help="another checkout's cds-service")
    args = parser.parse_args(argv)
    wrk_path()
    body = orjson.dumps(floor_request())
    counts = count_resources(orjson.loads(body))
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
        folder = Path(folder)
        floor_script = write_script(folder, "floor", "POST", body, (('"cards":[]', 1),))
        service_script = write_script(folder, "service", "POST", body,
                                      (('"indicator":', 1), ('"indicator":"warning"', 1)))
        floor_rows, service_rows = [], []
        with FloorServer() as floor, ProductionServer(workers=2,
                                                      command=args.cds_service) as service:
            answer = requests.post(f"{service.base_url}{SERVICE_PATH}", data=body, timeout=10,
                                   headers={"Content-Type": "application/json"})
            problem = one_warning_card(answer.status_code, answer.content)
            if problem:
                print(f"the service answered wrongly: {problem}", file=sys.stderr)
                return 1
            for url in (floor.base_url, service.base_url):  # warm both up
                run_wrk(f"{url}{SERVICE_PATH}", floor_script if url == floor.base_url
                        else service_script, 2, 2)
            for _ in range(args.rounds):
                floor_rows.append(measure(floor.base_url, floor_script, args.duration))
                service_rows.append(measure(service.base_url, service_script, args.duration))
    errors = sum(r[3] for r in floor_rows + service_rows)

    def median(rows, i):
        return statistics.median(r[i] for r in rows)

    print(f"code: {code_version()}   command: {args.cds_service or 'this checkout'}")
    print(f"body: {len(body) / 1024:.0f} KiB, {sum(counts.values())} resources "
          f"({', '.join(f'{n} {t}' for t, n in counts.most_common())})")
    print(f"gunicorn sync x2 each; wrk 1 connection (latency) and 8 connections (throughput); "
          f"{args.rounds} alternating rounds of {args.duration} s, medians")
    print(f"{'':26}{'p50 ms':>9}{'p99 ms':>9}{'req/s @8':>11}")
    print(f"{'floor (parse only)':26}{median(floor_rows, 0):9.2f}{median(floor_rows, 1):9.2f}"
          f"{median(floor_rows, 2):11.0f}")
    print(f"{'service (patient-view)':26}{median(service_rows, 0):9.2f}"
          f"{median(service_rows, 1):9.2f}{median(service_rows, 2):11.0f}")
    share = median(service_rows, 2) / median(floor_rows, 2)
    print(f"service throughput = {share:.0%} of the floor; goal: p50 <= 4 ms and >= 30%")
    print(f"wrong answers or socket errors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
