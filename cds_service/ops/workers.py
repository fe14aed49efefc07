"""`cds-service serve --server proxy`: gunicorn's sync workers on a private unix socket, with the
buffering front (front.py, granian) started beside them as the only thing that talks to them.

Why sync workers: the work is CPU-bound and a sync worker runs one call at a time and calls
accept() only when idle, so the next call goes to a free worker (the best placement measured
here, bench/README.md). Why the front: a sync worker reads its own request, so slow clients
would hold it; the front hands it only whole requests.

The gunicorn master (this process) builds the app once, freezes it for the collector and forks
the workers (copy-on-write, as before); it starts the front once its socket is listening,
restarts the front if it dies, and on SIGTERM stops the front first (it finishes the calls in
flight, which the workers still answer), then the workers. gunicorn replaces a worker that dies
or is stuck past its timeout; the front answers that worker's client a JSON 503.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cds_service.ops.config import Settings
from cds_service.ops.front import RECEIVED_AT_HEADER
from cds_service.ops.observability import json_logging_config
from cds_service.ops.rsgi_bridge import RECEIVED_AT
from cds_service.ops.server import (
    GRACEFUL_SECONDS,
    MAX_HEADER_BUFFER_BYTES,
    WORKER_TIMEOUT_SECONDS,
)

log = logging.getLogger("cds_service.ops.server")

# Past this many calls a worker is replaced (with jitter, not all at once): a slow leak cannot
# grow without bound. gunicorn has no memory-based limit.
MAX_REQUESTS, MAX_REQUESTS_JITTER = 10_000, 1_000
# The front waits this long for a worker's answer: past gunicorn's own timeout, which ends a
# stuck worker first (its client then gets the front's 503).
FRONT_TIMEOUT_SECONDS = WORKER_TIMEOUT_SECONDS + 5
# A front that dies sooner than this after its start cannot start at all: stop the service.
FRONT_MIN_UPTIME_SECONDS = 5.0
# SIGTERM: the front's graceful stop (granian's, and a moment to exit), then the workers'; the
# Kubernetes grace period covers both.
FRONT_STOP_SECONDS = GRACEFUL_SECONDS + 2
SHUTDOWN_SECONDS = FRONT_STOP_SECONDS + GRACEFUL_SECONDS
_WIRE_ENVIRON_KEY = "HTTP_" + RECEIVED_AT_HEADER.upper().replace("-", "_")


def with_received_at(app: Callable) -> Callable:
    """The app, told when the front had the whole request (its latency figures start there, so
    they include authentication and any wait for a free worker)."""

    def call(environ: dict, start_response: Callable):
        now = time.perf_counter()
        try:
            received = float(environ.pop(_WIRE_ENVIRON_KEY, now))
        except ValueError:
            received = now
        # perf_counter is CLOCK_MONOTONIC on Linux, shared by the front; anything odd: now.
        environ[RECEIVED_AT] = received if 0 <= now - received < 3600 else now
        return app(environ, start_response)

    return call


def log_config() -> dict:
    """gunicorn's loggers as JSON lines, like the service's own."""
    return json_logging_config({
        "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # The app logs each call itself, without PHI; no access log with URLs here.
        "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
    })


def gunicorn_options(socket_path: str, workers: int,
                     on_worker_exit: list[Callable[[], None]]) -> dict:
    def worker_exit(server, worker) -> None:
        for callback in on_worker_exit:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing clean-up must not skip the others
                log.exception("worker exit callback failed")

    def child_exit(server, worker) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    return {
        "bind": [f"unix:{socket_path}"], "workers": workers, "worker_class": "sync",
        "timeout": int(WORKER_TIMEOUT_SECONDS), "graceful_timeout": GRACEFUL_SECONDS,
        "max_requests": MAX_REQUESTS, "max_requests_jitter": MAX_REQUESTS_JITTER,
        "accesslog": None, "logconfig_dict": log_config(), "control_socket_disable": True,
        # Only the front connects, with headers it has already bounded (64 KB); the app's own
        # limits (header_limits.py) answer with the service's JSON 431, not gunicorn's HTML.
        # (0 is "unlimited" for the line and the count, but the default 8190 for a field.)
        "limit_request_line": 0, "limit_request_fields": 32768,
        "limit_request_field_size": MAX_HEADER_BUFFER_BYTES,
        "worker_exit": worker_exit, "child_exit": child_exit,
    }


def _die_with_parent() -> None:
    """In the front's process before exec: a SIGKILLed master takes its front down too."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _arbiter_class():
    from gunicorn.arbiter import Arbiter
    from gunicorn.errors import HaltServer

    class WithFront(Arbiter):
        """gunicorn's master, which also keeps the front running."""

        front_command: list[str] = []
        front: subprocess.Popen | None = None

        def start(self) -> None:
            super().start()  # the unix socket listens from here on
            self._start_front()

        def _start_front(self) -> None:
            # Its own process group: if the front's main process dies, its worker is ended
            # with it (killpg) rather than left holding the port.
            self.front = subprocess.Popen(self.front_command, preexec_fn=_die_with_parent,
                                          process_group=0)
            self.front_started = time.monotonic()
            self.log.info("front started (pid %s)", self.front.pid)

        def manage_workers(self) -> None:
            super().manage_workers()
            if self.front is not None and self.front.poll() is not None:
                code = self.front.returncode
                _kill_group(self.front.pid)
                if time.monotonic() - self.front_started < FRONT_MIN_UPTIME_SECONDS:
                    # It cannot start (the port is taken, say): stop rather than loop.
                    self.front = None
                    raise HaltServer(f"the front exited at start (code {code})", 1)
                self.log.error("the front exited (code %s): starting it again", code)
                self._start_front()

        def stop(self, graceful: bool = True) -> None:
            front, self.front = self.front, None
            if front is not None and front.poll() is None:
                front.send_signal(signal.SIGTERM if graceful else signal.SIGINT)
                try:
                    front.wait(FRONT_STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            if front is not None:
                _kill_group(front.pid)  # whatever of it is left
            super().stop(graceful)

    return WithFront


def _application(app: Callable, options: dict):
    from gunicorn.app.base import BaseApplication

    class Workers(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Callable:
            return app

    return Workers()


def front_command(host: str, port: int, socket_path: str, settings: Settings) -> list[str]:
    command = [sys.executable, "-m", "cds_service.ops.front", "--host", host, "--port",
               str(port), "--backend", socket_path, "--max-body-bytes",
               str(settings.max_body_bytes), "--timeout", str(FRONT_TIMEOUT_SECONDS)]
    for origin in settings.cors_origins:
        command += ["--cors-origin", origin]
    return command


def serve(build_app: Callable[[], tuple[Callable, list[Callable[[], None]]]],
          settings: Settings, host: str, port: int, workers: int) -> None:
    """Build the app here, then run gunicorn's master here with the front beside it."""
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="cds-metrics-"))
    # A folder only this user can enter: nothing local reaches the workers but the front.
    folder = Path(tempfile.mkdtemp(prefix="cds-workers-"))
    socket_path = str(folder / "workers.sock")
    app, on_worker_exit = build_app()
    gc.collect()
    gc.freeze()  # the warmed models are permanent: keep full collections short
    application = _application(with_received_at(app),
                               gunicorn_options(socket_path, workers, on_worker_exit))
    arbiter_class = _arbiter_class()
    arbiter_class.front_command = front_command(host, port, socket_path, settings)
    master = os.getpid()
    try:
        arbiter_class(application).run()
    finally:
        if os.getpid() == master:  # a worker leaves through here too (SystemExit)
            _remove(folder)


def _remove(folder: Path) -> None:
    for leftover in folder.iterdir():
        leftover.unlink(missing_ok=True)
    folder.rmdir()
