"""`cds-service serve`: granian (Rust HTTP front end) in front of the app, preloaded and warmed.

Why granian: the work is CPU-bound, so each worker runs one call at a time (as gunicorn's sync
workers did, which gave twice the throughput of threads here); but a sync worker is also held
by a client for as long as it trickles its request, so N slow connections stopped N workers.
granian reads connections in Rust with asynchronous I/O and the bridge (rsgi_bridge.py) awaits
each whole request before running the app, so slow clients cost no worker time.

The app is built once in the main process (knowledge loaded, templates compiled, fhir.resources
warmed), then `gc.freeze()` moves those objects out of the collector's sight (without it a full
collection costs ~30 ms and shows up as p99 spikes), then granian forks the workers: they share
the warmed app copy-on-write, as with gunicorn's preload.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from cds_service.ops.config import Settings
from cds_service.ops.observability import json_logging_config

if TYPE_CHECKING:
    from cds_service.ops.rsgi_bridge import RsgiBridge

# A call is answered in milliseconds; this long means a stuck worker: replace it.
WORKER_TIMEOUT_SECONDS = 30.0
# SIGTERM: finish the calls in flight (an EHR waits at most ~2 s), then exit.
GRACEFUL_SECONDS = 10
# Past this, a worker is replaced (checked every 30 s): a slow leak cannot grow without bound.
WORKER_MAX_RSS_MIB = 400
# Header bytes hyper buffers before answering a bare 431 itself. The service's own, lower
# limits (header_limits.py) answer first, with its JSON error body and CORS headers.
MAX_HEADER_BUFFER_BYTES = 64 * 1024


def log_config() -> dict:
    """granian's loggers as JSON lines, like the service's own (observability.json_logging)."""
    return json_logging_config({
        "_granian": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "granian.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
    })


def granian_options(host: str, port: int, workers: int) -> dict:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    return {
        "address": host,
        "port": port,
        "interface": Interfaces.RSGI,
        "workers": workers,
        "http": HTTPModes.http1,
        "websockets": False,
        # Headers must be in within this; bodies may trickle (they cost no Python time).
        # Kept alive, but closed every few answers (rsgi_bridge.REUSES_PER_CONNECTION).
        "http1_settings": HTTP1Settings(header_read_timeout=30_000,
                                        max_buffer_size=MAX_HEADER_BUFFER_BYTES),
        "log_dictconfig": log_config(),
        "log_access": False,  # the app logs each hook call itself, without PHI
        "respawn_failed_workers": True,  # a crashed or killed worker is replaced
        "respawn_interval": 0.5,
        "workers_kill_timeout": GRACEFUL_SECONDS,
        "workers_max_rss": WORKER_MAX_RSS_MIB,
    }


def bridge(app: Callable, max_body_bytes: int,
           on_worker_exit: list[Callable[[], None]]) -> RsgiBridge:
    """The warmed app behind the bridge, with the stuck-worker watchdog; in the main process."""
    from cds_service.ops.rsgi_bridge import RsgiBridge
    from cds_service.ops.watchdog import StuckWorkerWatchdog

    front = RsgiBridge(app, max_body_bytes, on_worker_exit=on_worker_exit)
    watchdog = StuckWorkerWatchdog(lambda: front.busy_since, WORKER_TIMEOUT_SECONDS)
    front.on_worker_start.append(watchdog.start)
    return front


def serve(build_app: Callable[[], tuple[Callable, list[Callable[[], None]]]],
          settings: Settings, host: str, port: int, workers: int) -> None:
    """Build the app (`build_app` -> the WSGI app and its worker-exit callbacks) in this
    process, then fork the workers."""
    # Metrics of all workers are aggregated through files: set before prometheus is imported.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="cds-metrics-"))
    from granian.server import Server

    # Workers are forked from this process, so they inherit the app built here.
    multiprocessing.set_start_method("fork", force=True)
    app, on_worker_exit = build_app()
    front = bridge(app, settings.max_body_bytes, on_worker_exit)
    gc.collect()
    gc.freeze()  # the warmed models are permanent: keep full collections short
    server = Server("cds_service.ops.server:bridge", **granian_options(host, port, workers))
    server.serve(target_loader=lambda *_: front, wrap_loader=False)
