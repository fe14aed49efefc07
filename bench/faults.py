"""`make faults`: the faults an operations team meets, against the real server, with EHR traffic.

    .venv/bin/python bench/faults.py                 # every scenario, ~3 min
    .venv/bin/python bench/faults.py --only locked-sqlite,kill-9 --seconds 5

Each scenario starts `cds-service serve --server S` (S = --server: proxy, granian's front before
gunicorn sync workers, by default; or granian, granian's workers alone), 2 workers, production
mode (a trusted client whose
EC P-384 key only this script holds, public_base_url the loopback URL) on a free loopback port
and drives it like two EHRs: signed patient-view calls (50 prefetch resources) one after the
other, and for every card returned a signed feedback report 100 ms later (so that it often
reaches the other worker before the card's record is written). After a warm-up the fault is
applied for --seconds, then removed; feedback answered 503 is sent again (as an EHR honouring
Retry-After) until acknowledged or 60 s have passed. Then the server is stopped and its store is
read: an outcome acknowledged (200) but not in the store is LOST.

Scenarios: baseline; slow-clients (200 connections sending headers or a body a byte a second;
also against the other server of `serve`, and against the server before issue 12, gunicorn
sync workers alone, to show the defect); kill-9 (one
worker SIGKILLed mid-traffic); full-disk (instance_dir on a 16 MB tmpfs, filled; needs root and
mount, else skipped and said so); locked-sqlite (the replay file and the card store held by an
exclusive lock); hung-postgresql (database_url through a relay to a throwaway PostgreSQL that
stops answering: connections accepted, nothing sent back).

Columns: calls tried; answered in time (200 with the card within --in-time-ms, 500 by default:
the short end of an EHR's patience); p50/p99 of the answered calls; outcomes sent; acknowledged
(200, after retries); 503 first (answered 503 or not at all, then sent again); still deferred
(503 to the end: the EHR keeps them); refused (4xx: a bug here); LOST. Exit code 0 when nothing
was lost or refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from production_server import CpuShare, ProductionServer, free_port
from requests_builder import hook_cases

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
ISS = "https://faults-ehr.example.org"
KEY = ec.generate_private_key(ec.SECP384R1())
PATH = "/cds-services/calciphylaxis-patient-view"
EHR_TIMEOUT_S = 2.0  # the long end of an EHR's patience: later is no card at all
FEEDBACK_DELAY_S = 0.1
RETRY_FOR_S = 60.0


# -- the service under test ----------------------------------------------------------------------
def write_config(folder: Path, port: int, instance_dir: Path,
                 database_url: str | None = None) -> Path:
    jwk = {**ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "faults-1"}
    (folder / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    lines = [f'public_base_url = "http://127.0.0.1:{port}/"',
             f'instance_dir = "{instance_dir}"',
             # The drill overrides every card it gets; quieting would then (rightly) hide the
             # same patient's next cards. Off here: every call is expected to bring its card.
             "override_quiet_days = 0"]
    if database_url:
        lines.append(f'database_url = "{database_url}"')
    lines += ["[[clients]]", f'iss = "{ISS}"', 'jwks_file = "jwks.json"']
    path = folder / "service.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def bearer(base_url: str, path: str) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"iss": ISS, "aud": base_url + path, "iat": now, "exp": now + 300,
                        "jti": str(uuid.uuid4())}, KEY, algorithm="ES384",
                       headers={"kid": "faults-1"})
    return {"Authorization": f"Bearer {token}"}


# -- the EHRs --------------------------------------------------------------------------------------
@dataclass
class Call:
    started: float  # monotonic
    ms: float
    with_card: bool


@dataclass
class Tally:
    calls: list[Call] = field(default_factory=list)
    fault_from: float = float("inf")  # monotonic bounds of the fault window
    fault_to: float = float("inf")
    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)  # card uuids
    deferred: dict[str, dict] = field(default_factory=dict)  # card uuid -> report
    refused: list[str] = field(default_factory=list)
    answered_later: int = 0  # 503 (Retry-After) or no answer, at least once
    lock: threading.Lock = field(default_factory=threading.Lock)


class Ehrs:
    """Two EHRs calling the hook one call after another; a feedback sender 100 ms behind."""

    def __init__(self, base_url: str, body: bytes, tally: Tally, in_time_ms: float,
                 signed: bool, ehrs: int = 2):
        self.base_url, self.body, self.tally = base_url, body, tally
        self.in_time_ms, self.signed = in_time_ms, signed
        self.stop = threading.Event()
        self.feedback: queue.Queue[tuple[float, dict]] = queue.Queue()
        self.threads = [threading.Thread(target=self._call_loop, daemon=True)
                        for _ in range(ehrs)]
        self.threads.append(threading.Thread(target=self._feedback_loop, daemon=True))

    def headers(self, path: str) -> dict[str, str]:
        return bearer(self.base_url, path) if self.signed else {}

    def _call_loop(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            started, began = time.perf_counter(), time.monotonic()
            cards = None
            try:
                answer = session.post(self.base_url + PATH, data=self.body, timeout=EHR_TIMEOUT_S,
                                      headers={"Content-Type": "application/json",
                                               **self.headers(PATH)})
                if answer.status_code == 200:
                    cards = answer.json()["cards"]
            except (requests.RequestException, ValueError):
                session = requests.Session()  # the connection may be gone (a killed worker)
            elapsed = (time.perf_counter() - started) * 1000
            with self.tally.lock:
                self.tally.calls.append(Call(began, elapsed, bool(cards)))
            for card in cards or ():
                report = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                                        "outcomeTimestamp": time.strftime(
                                            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "overrideReason": {"userComment": "fault drill"}}]}
                self.feedback.put((time.monotonic() + FEEDBACK_DELAY_S, report))
            self.stop.wait(0.01)

    def _feedback_loop(self) -> None:
        session = requests.Session()
        while not (self.stop.is_set() and self.feedback.empty()):
            try:
                due, report = self.feedback.get(timeout=0.2)
            except queue.Empty:
                continue
            time.sleep(max(0.0, due - time.monotonic()))
            with self.tally.lock:
                self.tally.sent += 1
            self.send(session, report)

    def send(self, session: requests.Session, report: dict) -> int | None:
        card = report["feedback"][0]["card"]
        path = PATH + "/feedback"
        try:
            answer = session.post(self.base_url + path, json=report, timeout=EHR_TIMEOUT_S,
                                  headers=self.headers(path))
            status = answer.status_code
        except requests.RequestException:
            status = None
        with self.tally.lock:
            if status == 200:
                self.tally.acknowledged.add(card)
                self.tally.deferred.pop(card, None)
            elif status is None or status >= 500:  # 503 + Retry-After, or no answer: later
                if card not in self.tally.deferred:
                    self.tally.answered_later += 1
                self.tally.deferred[card] = report
            else:
                self.tally.refused.append(f"{status} {answer.text[:160]}")
        return status

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(EHR_TIMEOUT_S * 3)

    def retry_deferred(self, give_up_at: float) -> None:
        session = requests.Session()
        while self.tally.deferred and time.monotonic() < give_up_at:
            for report in list(self.tally.deferred.values()):
                self.send(session, report)
            if self.tally.deferred:
                time.sleep(1.0)


# -- faults ----------------------------------------------------------------------------------------
class SlowClients:
    """Connections sending a request a byte a second: half the headers, half the body."""

    def __init__(self, port: int, count: int, body: bytes):
        self.port, self.count, self.body = port, count, body
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stopped = asyncio.Event()
        self.opened = 0

    async def _one(self, headers_slowly: bool) -> None:
        head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\n").encode()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return
        self.opened += 1
        data = head + b"X-Slow: " + b"a" * 4000 if headers_slowly else self.body
        if not headers_slowly:
            writer.write(head + b"\r\n")
        try:
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    await asyncio.wait_for(self.stopped.wait(), 1.0)
                    break
                except TimeoutError:
                    pass
        except OSError:
            pass
        writer.close()

    def start(self) -> None:
        self.thread.start()
        for n in range(self.count):
            asyncio.run_coroutine_threadsafe(self._one(n % 2 == 0), self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopped.set)
        time.sleep(0.2)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Relay:
    """TCP relay to PostgreSQL that can hang: connections accepted, nothing answered."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hung = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.hung.is_set():
                continue  # accepted, never answered
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.hung.is_set():  # a hung server: bytes go nowhere
                    time.sleep(0.05)
                    if source.fileno() < 0:
                        return
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass

    def hang(self) -> None:
        self.hung.set()

    def heal(self) -> None:
        # Connections that hung are broken off (the clients reconnect), new ones are relayed.
        for sock in list(self.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
        self.sockets.clear()
        self.hung.clear()

    def close(self) -> None:
        self.listener.close()
        self.heal()


def mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError:
            pass


# -- the store, read afterwards --------------------------------------------------------------------
def stored_outcomes(instance_dir: Path, database_url: str | None) -> set[str]:
    """Card uuids with an outcome in the store (moved in, or waiting for the card's record)."""
    query = "SELECT card_uuid FROM card_feedback UNION SELECT card_uuid FROM early_feedback"
    if database_url:
        import psycopg

        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as conn:
            return {row[0] for row in conn.execute(query)}
    with sqlite3.connect(instance_dir / "cds.sqlite3") as conn:
        return {row[0] for row in conn.execute(query)}


# -- scenarios -------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    tally: Tally | None = None
    lost: int = 0
    note: str = ""
    other_pct: float = float("nan")  # CPU other processes took during the fault window


@dataclass
class Scenario:
    name: str
    apply: Callable[[ProductionServer, dict], None] | None = None
    remove: Callable[[ProductionServer, dict], None] | None = None
    kind: str = "proxy"
    instance_on_tmpfs: bool = False
    postgres: bool = False


def run_scenario(scenario: Scenario, args: argparse.Namespace, body: bytes, pg) -> Row:
    row = Row(scenario.name)
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cds-faults-")))
        instance = folder / "instance"
        if scenario.instance_on_tmpfs:
            if os.geteuid() != 0 or not mount_tmpfs(instance):
                row.note = "skipped: cannot mount a tmpfs here (needs root and mount)"
                return row
            stack.callback(subprocess.run, ["umount", "-l", str(instance)], capture_output=True)
        port = free_port()
        database_url = relay = None
        if scenario.postgres:
            if pg is None:
                row.note = "skipped: no PostgreSQL server binaries (apt-get install postgresql)"
                return row
            target = stack.enter_context(pg.database())
            relay = Relay(pg.port)
            stack.callback(relay.close)
            database_url = target.replace(f":{pg.port}/", f":{relay.port}/")
        signed = scenario.kind in ("granian", "proxy")
        config = write_config(folder, port, instance, database_url) if signed else None
        server = stack.enter_context(ProductionServer(workers=2, port=port, kind=scenario.kind,
                                                      config=config))
        state = {"instance": instance, "relay": relay}
        tally = Tally()
        ehrs = Ehrs(server.base_url, body, tally, args.in_time_ms, signed)
        ehrs.start()
        time.sleep(args.warmup)
        tally.fault_from = time.monotonic()
        cpu = CpuShare(server)
        if scenario.apply:
            scenario.apply(server, state)
        time.sleep(args.seconds)
        tally.fault_to = time.monotonic()
        cpu.stop()
        row.other_pct = cpu.others_pct
        if scenario.remove:
            scenario.remove(server, state)
        time.sleep(2.0)
        ehrs.finish()
        ehrs.retry_deferred(time.monotonic() + RETRY_FOR_S)
        if not server.alive():
            row.note = "the server died"
        if tally.deferred:  # say why the store still refuses
            row.note = " | ".join(line[-160:] for line in server.log_tail(400).splitlines()
                                  if '"WARNING"' in line or '"ERROR"' in line)[-600:]
        server.stop()
        if signed:
            row.lost = len(tally.acknowledged - stored_outcomes(instance, database_url))
            if scenario.name == "kill-9":
                row.note = report_line(config)
        row.tally = tally
    return row


def report_line(config: Path) -> str:
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "cds-service"), "report", "--config",
                           str(config), "--format", "json"], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        return f"report failed: {done.stderr.strip()[-200:]}"
    counts = json.loads(done.stdout)["feedback_before_record"]
    return (f"report: {counts['reconciled']} outcomes reconciled, {counts['awaiting_record']} "
            f"awaiting a record lost with the killed worker")


def scenarios(body: bytes, server: str) -> list[Scenario]:
    slow: dict[str, SlowClients] = {}

    def start_slow(server, state):
        slow["c"] = SlowClients(server.port, 200, body)
        slow["c"].start()

    def stop_slow(server, state):
        slow["c"].stop()

    def kill_worker(server, state):
        os.kill(server.worker_pids()[0], signal.SIGKILL)

    def lock(server, state):
        state["locks"] = []
        for name in ("jwt-replay.sqlite3", "cds.sqlite3"):
            holder = sqlite3.connect(state["instance"] / name, isolation_level=None, timeout=5)
            holder.execute("BEGIN EXCLUSIVE")
            state["locks"].append(holder)

    def unlock(server, state):
        for holder in state["locks"]:
            holder.execute("ROLLBACK")
            holder.close()

    other = "granian" if server == "proxy" else "proxy"
    return [
        Scenario("baseline", kind=server),
        Scenario("slow-clients", start_slow, stop_slow, kind=server),
        Scenario(f"slow-clients, {other}", start_slow, stop_slow, kind=other),
        Scenario("slow-clients, before (gunicorn sync)", start_slow, stop_slow,
                 kind="gunicorn-sync"),
        Scenario("kill-9", kill_worker, kind=server),
        Scenario("full-disk", lambda s, st: fill(st["instance"]),
                 lambda s, st: (st["instance"] / "filler").unlink(), kind=server,
                 instance_on_tmpfs=True),
        Scenario("locked-sqlite", lock, unlock, kind=server),
        Scenario("hung-postgresql", lambda s, st: st["relay"].hang(),
                 lambda s, st: st["relay"].heal(), kind=server, postgres=True),
    ]


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    header = (f"{'scenario':<38} {'calls':>6} {'in time':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'all calls':>9} {'in time':>8} "
              f"{'outcomes':>8} {'503 first':>9} {'acked':>6} {'deferred':>8} {'refused':>7} "
              f"{'LOST':>5} {'other CPU':>9}")
    print(f"\nserver: cds-service serve --server {args.server}, 2 workers (rows naming another "
          "server ran that one)")
    print(f"in time = 200 with the card within {args.in_time_ms:g} ms. calls, in time, p50, "
          f"p99: the hook calls started while the fault was on ({args.seconds:g} s, after "
          f"{args.warmup:g} s of traffic); all calls: the whole run, 2 s after the fault "
          f"included. Outcomes answered 503 were re-sent until acked (up to {RETRY_FOR_S:g} "
          "s). other CPU: the share of the machine that processes other than the server and "
          "this script took during the fault.\n")
    print(header)
    print("-" * len(header))
    for row in rows:
        t = row.tally
        if t is None:
            print(f"{row.name:<38} {row.note}")
            continue
        during = [c for c in t.calls if t.fault_from <= c.started < t.fault_to]
        answered = [c.ms for c in during if c.with_card]
        q = (statistics.quantiles(answered, n=100, method="inclusive")
             if len(answered) > 1 else [float("nan")] * 99)

        def in_time(calls: list[Call]) -> int:
            return sum(c.with_card and c.ms <= args.in_time_ms for c in calls)

        lost = "-" if row.name.endswith("(gunicorn sync)") else row.lost
        print(f"{row.name:<38} {len(during):>6} {in_time(during):>8} {q[49]:>7.1f} "
              f"{q[98]:>7.1f} {len(t.calls):>9} {in_time(t.calls):>8} "
              f"{t.sent:>8} {t.answered_later:>9} {len(t.acknowledged):>6} "
              f"{len(t.deferred):>8} "
              f"{len(t.refused):>7} {lost:>5} {row.other_pct:>8.0f}%")
        if row.note:
            print(f"{'':<40}{row.note}")
        for refusal in t.refused[:3]:
            print(f"{'':<40}refused: {refusal}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="fault duration")
    parser.add_argument("--warmup", type=float, default=2.0, help="traffic before the fault")
    parser.add_argument("--in-time-ms", type=float, default=500.0)
    parser.add_argument("--only", help="comma-separated scenario names (prefixes)")
    parser.add_argument("--server", choices=("proxy", "granian"), default="proxy",
                        help="the server of `cds-service serve` to try")
    args = parser.parse_args(argv)
    body = hook_cases([50], ("patient-view",))[0].body
    chosen = scenarios(body, args.server)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        chosen = [s for s in chosen if any(s.name.startswith(w) for w in wanted)]
    pg = None
    if any(s.postgres for s in chosen):
        from postgres_server import PostgresServer, postgres_bin

        if (bin_dir := postgres_bin()) is not None:
            pg = PostgresServer(bin_dir)
    rows = []
    try:
        for scenario in chosen:
            print(f"running {scenario.name} ...", flush=True)
            rows.append(run_scenario(scenario, args, body, pg))
    finally:
        if pg is not None:
            pg.stop()
    print_table(rows, args)
    bad = [r for r in rows if r.tally and not r.name.endswith("(gunicorn sync)")
           and (r.lost or r.tally.refused)]
    print("\n" + ("FAILED: outcomes lost or refused" if bad else
                  "zero outcomes lost, none refused"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
