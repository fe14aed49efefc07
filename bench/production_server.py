"""The production server under test: `cds-service serve` on loopback, with either of its
servers (kind "granian": granian's workers run the app; "proxy": granian's front before
gunicorn sync workers, ops/workers.py), or for side-by-side figures the server before issue 12
(gunicorn sync workers alone, bench/gunicorn_sync.py).

    with ProductionServer(workers=2) as server:   # started, and answering GET /cds-services
    with ProductionServer(workers=2, kind="gunicorn-sync") as server:
    with ProductionServer(workers=2, kind="proxy") as server:
        server.base_url, server.master_pid, server.worker_pids(), server.rss_kb()

It runs in its own session (a Ctrl-C in the terminal reaches only the benchmark, which stops the
server in order), development mode (no config: loopback only), with its log in a temporary file
(`log_tail()` for when something goes wrong). Its working directory is a temporary folder,
removed afterwards: development mode keeps its `instance/` folder (the SQLite record of every
card shown, the JWT replay cache) relative to it, so each run starts from an empty store and
leaves the work tree's `instance/` alone; the Prometheus multiprocess files go there too.
Stopping is SIGTERM to the main process (a graceful stop of its workers), then SIGKILL after
15 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
CDS_SERVICE = ROOT / ".venv" / "bin" / "cds-service"
PYTHON = ROOT / ".venv" / "bin" / "python"
# `serve --server granian`, `serve --server proxy`; what `serve` ran before issue 12
SERVERS = ("granian", "proxy", "gunicorn-sync")
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) == 0


# -- memory, from /proc -------------------------------------------------------------------------
def vm_rss_kb(pid: int) -> int | None:
    """Resident set size of a process in KiB (VmRSS in /proc/<pid>/status); None if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as text:
            return text.read()
    except OSError:
        return None


def child_pids(parent: int) -> list[int]:
    """Direct children of `parent`, from the ppid field of /proc/<pid>/stat.

    (/proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN, which this kernel lacks.)
    """
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(parent):
            children.append(int(entry))
    return sorted(children)


# -- the server ---------------------------------------------------------------------------------
class ProductionServer:
    def __init__(self, workers: int, port: int | None = None, kind: str = "granian",
                 config: Path | None = None, env: dict[str, str] | None = None,
                 command: Path | None = None) -> None:
        self.workers = workers
        self.kind = kind
        self.port = port or free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.extra_env = env or {}
        if kind in ("granian", "proxy"):
            # `command`: another checkout's cds-service, to measure before and after (its
            # default server: older ones have no --server).
            self.command = [str(command or CDS_SERVICE), "serve", "--host", HOST, "--port",
                            str(self.port), "--workers", str(workers)]
            if command is None:
                self.command += ["--server", kind]
            if config is not None:
                self.command += ["--config", str(config)]
        elif kind == "gunicorn-sync":
            self.command = [str(PYTHON), str(ROOT / "bench" / "gunicorn_sync.py"), "--host", HOST,
                            "--port", str(self.port), "--workers", str(workers)]
        else:
            raise ValueError(f"unknown server {kind}; one of {', '.join(SERVERS)}")
        self.process: subprocess.Popen | None = None
        self.ready_s: float | None = None
        self._log = None
        self._work_dir = None

    def __enter__(self) -> ProductionServer:
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} on {HOST} is already in use")
        self._log = tempfile.TemporaryFile(mode="w+b")
        self._work_dir = tempfile.TemporaryDirectory(prefix="bench-cds-serve-")
        metrics_dir = Path(self._work_dir.name) / "metrics"
        metrics_dir.mkdir()
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), **self.extra_env)
        try:
            self.process = subprocess.Popen(
                self.command, cwd=self._work_dir.name, env=env, stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
            self.ready_s = self._wait_until_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            if self._log is not None:
                self._log.close()
            if self._work_dir is not None:
                self._work_dir.cleanup()

    @property
    def work_dir(self) -> Path:
        """The server's working directory (its instance/ folder is there)."""
        assert self._work_dir is not None
        return Path(self._work_dir.name)

    @property
    def master_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _wait_until_ready(self) -> float:
        started = time.perf_counter()
        deadline = started + STARTUP_TIMEOUT_S
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the server exited with code {self.process.returncode} while starting;"
                        f" its log ends:\n{self.log_tail()}"
                    )
                try:
                    answer = session.get(f"{self.base_url}/health", timeout=2)
                    if answer.status_code == 200 and len(self.worker_pids()) == self.workers:
                        return time.perf_counter() - started
                except requests.ConnectionError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(
            f"the server did not answer GET /health in {STARTUP_TIMEOUT_S:.0f} s"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM to the main process: graceful stop of its workers
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: master and workers
            self.process.wait(timeout=5)

    @property
    def exited_badly(self) -> bool:
        code = self.process.returncode if self.process else None
        return code not in (None, 0, -signal.SIGTERM)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def worker_pids(self) -> list[int]:
        """The processes that run the app: forked from the main process, so with its command
        line (the proxy's front is a child too, with its own)."""
        master = cmdline(self.master_pid)
        return [pid for pid in child_pids(self.master_pid) if cmdline(pid) == master]

    def all_pids(self) -> list[int]:
        """The main process and all its descendants (the front and its worker included)."""
        pids, queue = [], [self.master_pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            queue += child_pids(pid)
        return pids

    def rss_kb(self) -> dict[int, int]:
        """{pid: VmRSS KiB} of the master (first) and each live worker."""
        pids = [self.master_pid, *self.worker_pids()]
        return {pid: rss for pid in pids if (rss := vm_rss_kb(pid)) is not None}

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None or self._log.closed:
            return ""
        # pread: the server shares this file's offset, so reading must not move it.
        fd = self._log.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def code_version() -> str:
    """The commit being measured, and whether the service's code has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cds_service", "cards"], cwd=ROOT,
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return commit.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


# -- CPU time, to see what else ran on the machine during a measurement -------------------------
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int, reaped_children: bool = False) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone); with
    `reaped_children`, plus those of its children that have exited and been waited for."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), counted from the state (field 3)
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICKS_PER_S


def machine_busy_s() -> float:
    """CPU seconds all cores spent on anything but idling, since boot (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    guest = sum(values[8:10]) if len(values) > 9 else 0  # already counted in user and nice
    return (sum(values) - idle - guest) / TICKS_PER_S


class CpuShare:
    """CPU used by the server, by the load generator and by everything else over a run.

        share = CpuShare(server); ...run wrk...; share.stop(); share.others_pct
    Percentages are of the whole machine (all cores) over the wall time of the run.
    """

    def __init__(self, server: ProductionServer) -> None:
        self.server = server
        self.start_workers = set(server.worker_pids())
        self.start = self._snapshot(set(server.all_pids()) - {server.master_pid})

    def _snapshot(self, workers: set[int]) -> tuple[float, float, float, float]:
        me = os.times()
        # Workers recycled by gunicorn (max_requests) during the run were reaped by the master:
        # their CPU time is in the master's cutime/cstime.
        server = process_cpu_s(self.server.master_pid, reaped_children=True) + sum(
            process_cpu_s(p) for p in workers)
        return (time.monotonic(), machine_busy_s(), server,
                me.user + me.system + me.children_user + me.children_system)

    def stop(self) -> None:
        end_workers = set(self.server.worker_pids())
        end = self._snapshot(set(self.server.all_pids()) - {self.server.master_pid})
        self.restarted = len(end_workers - self.start_workers)  # at least this many
        wall, busy, server, bench = (e - s for e, s in zip(end, self.start, strict=True))
        capacity = wall * (os.cpu_count() or 1)
        self.server_pct = 100 * server / capacity
        self.bench_pct = 100 * bench / capacity  # this script and wrk (a waited-for child)
        self.others_pct = max(0.0, 100 * (busy - server - bench) / capacity)
