"""Granian's RSGI interface in front of the Flask (WSGI) app: whole requests, then one call.

Granian reads requests in Rust with asynchronous I/O. Its own WSGI interface hands the app a
body that is read on demand, so a client trickling its body holds the worker's Python thread
(measured: 100 such connections stopped 2 workers). Here the body is awaited in full first
(the Rust side buffers it while the event loop serves others), then the app runs on the loop's
thread, one request at a time per worker, like a sync worker: no thread switching, no GIL
contention, and slow clients cost no Python time at all.

Bodies are bounded before they are read: a Content-Length over the limit is not read (the app
answers 413 from the header), a chunked body is read up to one byte past the limit (the app then
answers 413). Every answer, errors included, comes from the app, so it has the service's JSON
error shape and CORS headers.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cds_service.ops.server")

# Set in the environ when the whole request is in: the app's latency figures start here, so
# they include authentication and any wait for this worker.
RECEIVED_AT = "cds.received_at"

REUSES_PER_CONNECTION = 8

_ERROR_BODY = (b'{"resourceType":"OperationOutcome","issue":[{"severity":"error",'
               b'"code":"exception","diagnostics":"internal error"}]}')


class RsgiBridge:
    """The RSGI application granian calls; `wsgi_app` is the Flask app."""

    def __init__(self, wsgi_app: Callable, max_body_bytes: int, *,
                 on_worker_start: list[Callable[[], None]] | None = None,
                 on_worker_exit: list[Callable[[], None]] | None = None):
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self.on_worker_start = on_worker_start if on_worker_start is not None else []
        self.on_worker_exit = on_worker_exit if on_worker_exit is not None else []
        self.busy_since: float | None = None  # monotonic start of the call in progress
        self._uses: dict[str, int] = {}  # answers so far per client connection (ip:port)
        self._base = {
            "wsgi.version": (1, 0), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "SCRIPT_NAME": "",
            # The body is complete: werkzeug may read it to the end without a Content-Length.
            "wsgi.input_terminated": True,
        }

    # -- granian's hooks (run in each worker process) -----------------------------------------
    def __rsgi_init__(self, loop) -> None:
        for callback in self.on_worker_start:
            callback()

    def __rsgi_del__(self, loop) -> None:
        # Worker processes end with os._exit (multiprocessing): atexit handlers never run there.
        for callback in self.on_worker_exit:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one failing clean-up must not skip the others
                log.exception("worker exit callback failed")

    async def __rsgi__(self, scope, proto) -> None:
        body, length = await self._read_body(scope, proto)
        environ = self._environ(scope, body, length)
        status, headers, content = self._call(environ)
        if self._time_to_close(scope.client):
            headers.append(("Connection", "close"))
        proto.response_bytes(status, headers, content)

    def _time_to_close(self, client: str) -> bool:
        """Every REUSES_PER_CONNECTION-th answer on a connection closes it. Each worker accepts
        connections on its own, even while busy: kept alive for ever, a few connections can all
        land on one worker and leave the other idle for as long as they live; reconnecting now
        and then places them afresh."""
        count = self._uses.get(client, 0) + 1
        if count >= REUSES_PER_CONNECTION:
            self._uses.pop(client, None)
            return True
        if len(self._uses) >= 10_000:  # connections gone without a last answer: forget them
            self._uses.clear()
        self._uses[client] = count
        return False

    # -- the request ------------------------------------------------------------------------
    async def _read_body(self, scope, proto) -> tuple[bytes, str | None]:
        declared = scope.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size > self.max_body_bytes:
                return b"", declared  # the app refuses it from the header (413)
            return await proto(), declared
        if scope.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return b"", None
        chunks, received = [], 0
        async for chunk in proto:
            chunks.append(chunk)
            received += len(chunk)
            if received > self.max_body_bytes:
                break  # enough to know it is too large; the app answers 413
        return b"".join(chunks), None

    def _environ(self, scope, body: bytes, length: str | None) -> dict[str, Any]:
        host, _, port = scope.server.rpartition(":")
        environ = dict(self._base)
        environ.update({
            "REQUEST_METHOD": scope.method,
            "PATH_INFO": scope.path,
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": host,
            "SERVER_PORT": port,
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": scope.client.rpartition(":")[0],
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            RECEIVED_AT: time.perf_counter(),
        })
        if length is not None:
            environ["CONTENT_LENGTH"] = length
        for name, value in scope.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_LENGTH":
                continue
            if key != "CONTENT_TYPE":
                key = "HTTP_" + key
            # Repeated headers are joined, as CGI does.
            environ[key] = f"{environ[key]}, {value}" if key in environ else value
        return environ

    def _call(self, environ: dict) -> tuple[int, list[tuple[str, str]], bytes]:
        started: list = []

        def start_response(status: str, headers: list, exc_info=None):
            started[:] = [int(status.split(" ", 1)[0]), headers]

        self.busy_since = time.monotonic()
        try:
            result = self.wsgi_app(environ, start_response)
            try:
                content = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        except Exception:  # noqa: BLE001 - Flask answers its own errors; this is a last resort
            log.exception("the application failed outside its error handlers")
            return 500, [("Content-Type", "application/json")], _ERROR_BODY
        finally:
            self.busy_since = None
        return started[0], [(str(k), str(v)) for k, v in started[1]], content
