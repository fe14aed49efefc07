"""The server `cds-service serve` ran before issue 12, for side-by-side measurements only:
gunicorn sync workers, the app preloaded and warmed in the master, gc.freeze() after warm-up.

    .venv/bin/python bench/gunicorn_sync.py --host 127.0.0.1 --port 8081 --workers 2

Same app, same settings as `cds-service serve` in development mode; only the HTTP server
differs. gunicorn is a dev dependency (pyproject.toml [dev]) for this script alone.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="cds-metrics-"))
    from gunicorn.app.base import BaseApplication
    from prometheus_client import multiprocess

    from cds_service.bootstrap import create_app
    from cds_service.ops.config import Settings
    from cds_service.ops.observability import json_logging

    json_logging()

    def child_exit(server, worker) -> None:
        multiprocess.mark_process_dead(worker.pid)

    options = {
        "bind": [f"{args.host}:{args.port}"], "workers": args.workers, "worker_class": "sync",
        "preload_app": True, "timeout": 30, "graceful_timeout": 10, "keepalive": 5,
        "max_requests": 10000, "max_requests_jitter": 1000, "accesslog": None,
        "control_socket_disable": True, "child_exit": child_exit,
    }

    class Server(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            app = create_app(Settings())
            gc.collect()
            gc.freeze()
            return app

    Server().run()


if __name__ == "__main__":
    main()
