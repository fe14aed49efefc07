"""Throughput of two servers side by side, interleaved so that both see the same machine: by
default `cds-service serve --server proxy` (granian's front before gunicorn sync workers) and
the server before issue 12 (gunicorn sync workers alone, no front).

    .venv/bin/python bench/server_ab.py                       # 3 rounds x 4 kinds x 5 s x 2
    .venv/bin/python bench/server_ab.py --rounds 5 --seconds 8
    .venv/bin/python bench/server_ab.py --servers granian,gunicorn-sync

Both servers run at once (2 workers each, development mode, the same app); an idle one costs
nothing. For each kind of request, each round runs wrk (4 connections) against one server then
the other, alternating which goes first, so that other work on this shared machine falls on
both alike. Prints req/s per round, the mean per server, the ratio, and the CPU other processes
took during each run (as bench/load.py). Every answer is checked by wrk's Lua script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from production_server import SERVERS, CpuShare, ProductionServer
from requests_builder import hook_cases
from wrk_runner import run_wrk, write_script

LABELS = {"granian": "granian", "proxy": "proxy", "gunicorn-sync": "gunicorn sync"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--sizes", default="50,250")
    parser.add_argument("--servers", default="proxy,gunicorn-sync",
                        help=f"two of {', '.join(SERVERS)}: new,baseline")
    args = parser.parse_args(argv)
    names = tuple(args.servers.split(","))
    if len(names) != 2 or not set(names) <= set(SERVERS):
        parser.error(f"--servers: two of {', '.join(SERVERS)}")
    new, base = names
    cases = hook_cases([int(s) for s in args.sizes.split(",")])
    figures: dict[tuple[str, str], list[float]] = {}
    others: dict[tuple[str, str], list[float]] = {}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as folder, ExitStack() as stack:
        servers = {name: stack.enter_context(ProductionServer(workers=2, kind=name))
                   for name in names}
        for index, case in enumerate(cases):
            script = write_script(Path(folder), f"case{index}", case.method, case.body,
                                  case.markers)
            for round_ in range(args.rounds):
                order = names if round_ % 2 == 0 else names[::-1]
                for name in order:
                    server = servers[name]
                    cpu = CpuShare(server)
                    result = run_wrk(server.base_url + case.path, script, args.connections,
                                     args.seconds)
                    cpu.stop()
                    errors += result.errors
                    figures.setdefault((case.name, name), []).append(result.req_per_s)
                    others.setdefault((case.name, name), []).append(cpu.others_pct)
            print(f"  {case.name}: done", flush=True)
    print(f"\nreq/s, {args.rounds} interleaved rounds of {args.seconds} s, wrk "
          f"--connections={args.connections}, 2 workers each; other CPU = mean share of the "
          f"machine other processes took during the runs\n")
    header = (f"{'request':<24} {LABELS[new] + ' req/s (rounds)':<28} "
              f"{LABELS[base] + ' req/s (rounds)':<30} {'mean ratio':>10} {'other CPU':>10}")
    print(header)
    print("-" * len(header))
    for case in cases:
        now, before = figures[(case.name, new)], figures[(case.name, base)]
        other = statistics.mean(others[(case.name, new)] + others[(case.name, base)])
        print(f"{case.name:<24} {' '.join(f'{x:6.0f}' for x in now):<28} "
              f"{' '.join(f'{x:6.0f}' for x in before):<30} "
              f"{statistics.mean(now) / statistics.mean(before):>9.2f}x {other:>9.0f}%")
    print(f"\nerrors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
