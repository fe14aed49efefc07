"""Gunicorn settings for `cds-service serve`: sync workers, preloaded and warmed once.

Sync workers gave about twice the throughput of threads for this CPU-bound work on 2 cores.
The app is built in the master (knowledge loaded, templates compiled, fhir.resources warmed),
then `gc.freeze()` moves those objects out of the collector's sight: without it a full
collection costs ~30 ms and shows up as p99 spikes.
"""

from __future__ import annotations

from prometheus_client import multiprocess


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges from the multiprocess metrics."""
    multiprocess.mark_process_dead(worker.pid)


def settings(bind: str, workers: int) -> dict:
    return {
        "bind": [bind],
        "workers": workers,
        "worker_class": "sync",
        "preload_app": True,
        # A hook call is answered in milliseconds; 30 s means a stuck worker, restart it.
        "timeout": 30,
        # SIGTERM: finish the requests in flight (an EHR waits at most ~2 s) then exit.
        "graceful_timeout": 10,
        "keepalive": 5,
        # Recycle workers now and then so that no slow leak can grow without bound.
        "max_requests": 10000,
        "max_requests_jitter": 1000,
        "accesslog": None,  # the app logs each hook call itself, without PHI
        # gunicorn 27's control socket lives in $HOME, which a container user may lack.
        "control_socket_disable": True,
        "child_exit": child_exit,
    }
