"""`cds-service serve` as shipped, in a real process on a free loopback port, for the tests
that are about a real server (slow clients, logs, killed workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from fhir_server import free_port

CDS_SERVICE = Path(sys.executable).parent / "cds-service"


class Served:
    def __init__(self, workers: int = 2, config: Path | None = None,
                 env: dict[str, str] | None = None, server: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="cds-served-"))
        self.log_path = self.folder / "server.log"
        command = [str(CDS_SERVICE), "serve", "--port", str(self.port),
                   "--workers", str(workers)]
        if server is not None:  # else the default of `serve`
            command += ["--server", server]
        if config is not None:
            command += ["--config", str(config), "--host", "127.0.0.1"]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, cwd=self.folder, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir()),
                 **(env or {})},
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log()}")

    def _metrics_dir(self) -> Path:
        path = self.folder / "metrics"
        path.mkdir(exist_ok=True)
        return path

    def worker_pids(self) -> list[int]:
        """The processes that run the app: forked from the main one, so with its command line
        (the proxy's front is a child with its own)."""
        master = _cmdline(self.process.pid)
        return sorted(pid for pid in _children(self.process.pid) if _cmdline(pid) == master)

    def front_pids(self) -> list[int]:
        master = _cmdline(self.process.pid)
        return sorted(pid for pid in _children(self.process.pid) if _cmdline(pid) != master)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text(errors="replace")
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == str(parent):
                children.append(int(entry))
    return children


def socket_count(pid: int) -> int:
    """Open sockets of a process (a sync worker serving a client holds one more)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


class SlowClients:
    """Connections that send a request a byte at a time (headers, or the body after complete
    headers) for as long as they run: what a stalled or hostile client does."""

    def __init__(self, port: int, count: int, path: str, body: bytes,
                 interval_seconds: float = 0.5):
        self.stop_event = threading.Event()
        self.port, self.path, self.body, self.interval = port, path, body, interval_seconds
        self.threads = [threading.Thread(target=self._trickle, args=(n % 2 == 0,), daemon=True)
                        for n in range(count)]
        self.connected = 0
        self._lock = threading.Lock()

    def _trickle(self, headers_slowly: bool) -> None:
        head = (f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(self.body)}\r\n").encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                with self._lock:
                    self.connected += 1
                if headers_slowly:
                    data = head + b"X-Slow: " + b"a" * 4000
                else:
                    sock.sendall(head + b"\r\n")
                    data = self.body
                for byte in data:
                    if self.stop_event.wait(self.interval):
                        return
                    sock.sendall(bytes([byte]))
        except OSError:
            return  # the server may close a stalled connection: that is allowed

    def __enter__(self) -> SlowClients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(10)
