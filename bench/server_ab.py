"""Throughput of two or three servers side by side, interleaved so that all see the same
machine: by default `cds-service serve --server proxy` (granian's front before gunicorn sync
workers) and the server before issue 12 (gunicorn sync workers alone, no front).

    .venv/bin/python bench/server_ab.py                       # 3 rounds x 4 kinds x 5 s x 2
    .venv/bin/python bench/server_ab.py --rounds 5 --seconds 8
    .venv/bin/python bench/server_ab.py --servers proxy,granian,gunicorn-sync

The servers run at once (2 workers each, development mode, the same app); an idle one costs
nothing. For each kind of request, each round runs wrk (4 connections) against each server in
turn, changing which goes first, so that other work on this shared machine falls on all
alike. Prints req/s per round, each server's mean over the last one's (the ratio), and the
CPU other processes took during the runs (as bench/load.py). Every answer is checked by wrk's
Lua script.
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
                        help=f"two or three of {', '.join(SERVERS)}; ratios are to the last")
    args = parser.parse_args(argv)
    names = tuple(args.servers.split(","))
    if len(names) not in (2, 3) or len(set(names)) != len(names) or \
            not set(names) <= set(SERVERS):
        parser.error(f"--servers: two or three of {', '.join(SERVERS)}")
    base = names[-1]
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
                # Each server first in turn, then last: other load falls on all alike.
                shift = round_ % len(names)
                order = names[shift:] + names[:shift]
                order = order if round_ % 2 == 0 else order[::-1]
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
    print(f"\nreq/s per round (ratios of the means), {args.rounds} interleaved rounds of "
          f"{args.seconds} s, wrk "
          f"--connections={args.connections}, 2 workers each; other CPU = mean share of the "
          f"machine other processes took during the runs\n")
    width = 7 * args.rounds + 2
    header = f"{'request':<24} " + "".join(f"{LABELS[n] + ' req/s':<{width}}" for n in names)
    header += "".join(f"{LABELS[n] + '/' + LABELS[base]:>24}" for n in names[:-1])
    header += f" {'other CPU':>10}"
    print(header)
    print("-" * len(header))
    for case in cases:
        line = f"{case.name:<24} "
        for name in names:
            line += f"{' '.join(f'{x:6.0f}' for x in figures[(case.name, name)]):<{width}}"
        before = statistics.mean(figures[(case.name, base)])
        for name in names[:-1]:
            line += f"{statistics.mean(figures[(case.name, name)]) / before:>23.2f}x"
        other = statistics.mean(x for n in names for x in others[(case.name, n)])
        print(f"{line} {other:>9.0f}%")
    print(f"\nerrors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
