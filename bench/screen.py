"""`make bench-screen`: the population screen beside floors measured in the same run.

    .venv/bin/python bench/screen.py [--sizes 1000,10000,100000] [--seed 1] [--skip-floors]

For each size, a generated Bulk export (fixtures/population.py, cached under bench/.cache/ by
size and seed) is read by:
  parse-1    one process that only orjson-parses every line of every file
  parse-2    the same on two processes (byte ranges of 32 MiB, multiprocessing)
  duckdb     DuckDB read_ndjson_auto with a simple rule in SQL: a dialysis procedure code AND an
             active culprit drug code, OR a latest PTH above 585 pg/mL (2 threads)
  screen     the full screen: Dask on a local cluster of 2 single-threaded worker processes
             (started before the clock), the real record builder and assessment
Each runs in its own child process, which reports its seconds and peak RSS (and the screen,
each worker's). The page cache is warmed by reading the files once first. Other engineers share
the machine: the 1-minute load average is printed beside each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
AS_OF = "2026-11-20T12:00:00Z"
CHUNK = 32 * 2**20


def export_for(patients: int, seed: int) -> Path:
    """The cached export of this size and seed (generated on first use)."""
    folder = CACHE / f"screen-{patients}-seed{seed}"
    if not folder.is_dir():
        sys.path.insert(0, str(ROOT / "fixtures"))
        from population import generate

        partial = folder.with_suffix(".tmp")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"generating {patients:,} patients into {folder} ...", flush=True)
        generate(partial, patients, seed=seed, as_of=AS_OF)
        partial.rename(folder)
    return folder


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu(who=resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _ranges(folder: Path) -> list[tuple[str, int, int]]:
    found = []
    for path in sorted(folder.glob("*.ndjson")):
        size = path.stat().st_size
        found += [(str(path), start, min(start + CHUNK, size)) for start in range(0, size, CHUNK)]
    return found


def _parse_range(task: tuple[str, int, int]) -> int:
    """orjson.loads of every line starting in [start, end) of a file."""
    import orjson

    path, start, end = task
    with open(path, "rb") as handle:
        if start:
            handle.seek(start - 1)
            handle.readline()  # the line that began before `start` is the previous range's
        data = handle.read(max(0, end - handle.tell()))
        data += handle.readline()  # finish the last line
    count = 0
    for line in data.split(b"\n"):
        if line:
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                pass
            count += 1
    return count


def floor_parse(folder: Path, processes: int) -> dict:
    started = time.perf_counter()
    if processes == 1:
        lines = sum(map(_parse_range, _ranges(folder)))
        workers = []
    else:
        with Pool(processes) as pool:
            lines = sum(pool.imap_unordered(_parse_range, _ranges(folder)))
            workers = []
    seconds = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"seconds": seconds, "cpu": _cpu() + _cpu(resource.RUSAGE_CHILDREN), "lines": lines,
            "rss_mb": _peak_mb(),
            "worker_rss_mb": [children] * (processes if processes > 1 else 0) or workers}


def floor_duckdb(folder: Path) -> dict:
    import duckdb

    sys.path.insert(0, str(ROOT))
    from cds_service.knowledge import load_knowledge

    knowledge = load_knowledge()
    dialysis = sorted({c for _s, c in knowledge.procedures["dialysis"].codes})
    culprit = sorted({code for c in knowledge.medicines.classes
                      if c.factor and knowledge.factors[c.factor].culprit_drug
                      for code in c.rxnorm})
    pth = sorted(knowledge.labs["pth"].loinc)

    def quoted(codes):
        return ", ".join(f"'{c}'" for c in codes)

    def source(kind: str) -> str:
        return (f"read_ndjson_auto('{folder}/{kind}.*.ndjson', ignore_errors=true, "
                f"union_by_name=true)")

    sql = f"""
    WITH dialysis AS (
      SELECT DISTINCT split_part(subject.reference, '/', 2) AS pid FROM {source('Procedure')} p
      WHERE len(list_filter(p.code.coding, lambda c: c.code IN ({quoted(dialysis)}))) > 0),
    culprit AS (
      SELECT DISTINCT split_part(subject.reference, '/', 2) AS pid
      FROM {source('MedicationRequest')} m
      WHERE status = 'active' AND len(list_filter(m.medicationCodeableConcept.coding,
                                                  lambda c: c.code IN ({quoted(culprit)}))) > 0),
    pth AS (
      SELECT split_part(subject.reference, '/', 2) AS pid,
             arg_max(valueQuantity.value, effectiveDateTime) AS latest
      FROM {source('Observation')} o
      WHERE len(list_filter(o.code.coding, lambda c: c.code IN ({quoted(pth)}))) > 0
      GROUP BY 1)
    SELECT count(*) FROM dialysis
    WHERE pid IN (SELECT pid FROM culprit) OR pid IN (SELECT pid FROM pth WHERE latest > 585)
    """
    connection = duckdb.connect()
    connection.execute("SET threads TO 2")
    started = time.perf_counter()
    cpu = _cpu()
    flagged = connection.execute(sql).fetchone()[0]
    return {"seconds": time.perf_counter() - started, "cpu": _cpu() - cpu, "flagged": flagged,
            "rss_mb": _peak_mb()}


def measure_screen(folder: Path, workers: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from distributed import Client, LocalCluster

    from cds_service.screening import screen

    started = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    with cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        start_seconds = time.perf_counter() - started
        as_of = datetime.fromisoformat(AS_OF.replace("Z", "+00:00"))
        before = sum(client.run(_cpu).values()) + _cpu()
        result = screen(folder, as_of, scheduler=cluster.scheduler_address)
        cpu = sum(client.run(_cpu).values()) + _cpu() - before
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    c = result.counts
    return {"seconds": result.seconds, "cpu": cpu, "cluster_start_seconds": start_seconds,
            "phases": result.phases, "lines": c.lines, "patients": c.patients,
            "in_scope": result.in_scope, "flagged": len(result.rows),
            "candidates": result.candidates, "partitions": result.partitions,
            "shipped_lines": c.shipped_lines, "shipped_mb": c.shipped_bytes / 2**20,
            "shuffled_mb": c.shuffled_bytes / 2**20,
            "rss_mb": _peak_mb(), "worker_rss_mb": sorted(peaks.values())}


def _child(kind: str, folder: Path) -> dict:
    """Run one measurement in a fresh process: its peak RSS is its own."""
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> float:
    return os.getloadavg()[0]


def _warm(folder: Path) -> float:
    size = 0
    for path in folder.glob("*.ndjson"):
        with open(path, "rb") as handle:
            while chunk := handle.read(2**24):
                size += len(chunk)
    return size / 1e9


def run(sizes: list[int], seed: int, skip_floors: bool) -> list[dict]:
    results = []
    for patients in sizes:
        folder = export_for(patients, seed)
        gigabytes = _warm(folder)
        row = {"patients": patients, "gb": gigabytes, "load": {}}
        kinds = ("screen",) if skip_floors else ("parse-1", "parse-2", "duckdb", "screen")
        for kind in kinds:
            before = _load()
            row[kind] = _child(kind, folder)
            row["load"][kind] = (before, _load())
            print(f"  {patients:>7,} {kind:<8} {json.dumps(row[kind])}", flush=True)
        results.append(row)
        report([row])
    return results


def report(results: list[dict]) -> None:
    print(f"\n{'patients':>9} {'GB':>5} {'lines':>10} | {'parse-1':>8} {'parse-2':>8} "
          f"{'duckdb':>7} | {'screen':>7} {'res/s':>9} {'pat/s':>7} {'x p2':>5} {'x ddb':>6} | "
          f"{'RSS main':>8} {'RSS workers':>13} | load 1 min")
    for row in results:
        s = row["screen"]
        if "error" in s:
            print(f"{row['patients']:>9,} screen failed: {s['error']}")
            continue

        def secs(kind, row=row):
            value = row.get(kind, {}).get("seconds")
            return f"{value:8.1f}" if value is not None else f"{'-':>8}"

        p2 = row.get("parse-2", {}).get("seconds")
        ddb = row.get("duckdb", {}).get("seconds")
        loads = ", ".join(f"{k} {a:.1f}-{b:.1f}" for k, (a, b) in row["load"].items())
        print(f"{row['patients']:>9,} {row['gb']:5.2f} {s['lines']:>10,} | {secs('parse-1')} "
              f"{secs('parse-2')} {secs('duckdb')[1:]} | {s['seconds']:7.1f} "
              f"{s['lines'] / s['seconds']:9,.0f} {s['patients'] / s['seconds']:7,.0f} "
              f"{(s['seconds'] / p2) if p2 else float('nan'):5.2f} "
              f"{(s['seconds'] / ddb) if ddb else float('nan'):6.2f} | "
              f"{s['rss_mb']:6.0f}MB {'/'.join(f'{w:.0f}' for w in s['worker_rss_mb']):>11}MB"
              f" | {loads}")
        kinds = ("parse-1", "parse-2", "duckdb", "screen")
        cpus = ", ".join(f"{k} {row[k]['cpu']:.1f}" for k in kinds if "cpu" in row.get(k, {}))
        print(f"{'':>9} CPU seconds (all processes of each): {cpus}")
        print(f"{'':>9} screen: {s['candidates']:,} candidates, {s['in_scope']:,} in scope, "
              f"{s['flagged']:,} flagged; {s['partitions']} partitions; shuffled "
              f"{s['shipped_lines']:,} lines ({s['shipped_mb']:.1f} MB, "
              f"{s.get('shuffled_mb', s['shipped_mb']):.1f} MB compressed); phases "
              f"{', '.join(f'{k} {v:.1f} s' for k, v in s['phases'].items())}; cluster start "
              f"{s['cluster_start_seconds']:.1f} s (not counted)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-floors", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.child:
        kind, folder = args.child[0], Path(args.child[1])
        measure = {"parse-1": lambda: floor_parse(folder, 1),
                   "parse-2": lambda: floor_parse(folder, 2),
                   "duckdb": lambda: floor_duckdb(folder),
                   "screen": lambda: measure_screen(folder, 2)}[kind]
        print(json.dumps(measure()))
        return 0
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()}")
    results = run(sizes, args.seed, args.skip_floors)
    print("\nall sizes:")
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
