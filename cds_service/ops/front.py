"""The front of `cds-service serve --server proxy`: granian reads each whole request with
asynchronous I/O, then hands it to gunicorn's sync workers over a unix socket (h11).

Why a proxy in front of sync workers: a sync worker calls accept() only when idle, so a call
never waits behind a busy worker while another idles (granian's own workers accept in Rust even
while their Python thread is busy: bench/README.md, issue 12). But a sync worker reads its
request itself, so a client trickling its headers or body would hold it; here only complete
requests reach the workers, written at once over a local socket. Slow clients cost this
process a connection each and no Python time until their request is whole.

Bodies are bounded before they are read, as in rsgi_bridge.py: over the limit, the request goes
on with its Content-Length and no body, and the app answers the 413 from the header (JSON, CORS).
Every answer comes from the app except when no worker answered at all (killed, stuck past
gunicorn's timeout): then this front answers a JSON 503 with Retry-After, so the client is told.

Run by workers.py as its own process: `python -m cds_service.ops.front --port P --backend SOCK`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import time
from urllib.parse import quote

import h11

log = logging.getLogger("cds_service.ops.front")

# When the whole request was in, on CLOCK_MONOTONIC (shared by every process on the host): the
# workers' latency figures start from it, so they include the wait for a free worker.
RECEIVED_AT_HEADER = "x-cds-received-at"
# Connection-level headers (RFC 9110 7.6.1) are this hop's, not the worker's; the framing is
# redone here (the body is whole: Content-Length); a client must not set the received time.
_NOT_FORWARDED = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                            "transfer-encoding", "upgrade", "content-length", "expect",
                            RECEIVED_AT_HEADER})
_NOT_RETURNED = frozenset({"connection", "keep-alive", "transfer-encoding", "server"})
_READ_BYTES = 256 * 1024
_PATH_SAFE = "/!$&'()*+,;=:@"  # RFC 3986 pchar, besides letters, digits and -._~


class BufferingProxy:
    """The RSGI application granian calls in the front process."""

    def __init__(self, socket_path: str, max_body_bytes: int, timeout_seconds: float,
                 cors_origins: tuple[str, ...] = ("*",)):
        self.socket_path = socket_path
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout_seconds
        self.cors_origins = cors_origins

    def __rsgi_init__(self, loop) -> None:
        pass

    def __rsgi_del__(self, loop) -> None:
        pass

    async def __rsgi__(self, scope, proto) -> None:
        body, length = await self._read_body(scope, proto)
        client = h11.Connection(h11.CLIENT)
        try:
            head = client.send(self._request(scope, length, time.perf_counter()))
        except h11.LocalProtocolError:  # granian took it; h11 finds it invalid HTTP/1.1
            proto.response_bytes(*self._failure(scope, 400, "invalid", "malformed request"))
            return
        try:
            async with asyncio.timeout(self.timeout):  # no extra task, unlike wait_for
                status, headers, content = await self._forward(
                    client, head, body if length == len(body) else None)
        except (OSError, h11.ProtocolError, EOFError) as exc:
            # The worker died (killed, or ended by gunicorn's timeout) or none could be reached.
            log.error("no answer from a worker for %s %s: %s", scope.method, scope.path,
                      type(exc).__name__)
            status, headers, content = self._failure(scope, 503, "transient",
                                                     "no worker answered; try again")
        except TimeoutError:
            log.error("no answer from a worker for %s %s within %.0f s", scope.method,
                      scope.path, self.timeout)
            status, headers, content = self._failure(scope, 504, "timeout",
                                                     "no worker answered in time")
        proto.response_bytes(status, headers, content)

    # -- the request ------------------------------------------------------------------------
    async def _read_body(self, scope, proto) -> tuple[bytes, int]:
        """The body, and the Content-Length to forward: larger than the body when the body
        is over the limit (then not forwarded at all)."""
        declared = scope.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                return b"", 0  # unreadable: the app sees no body and says what it needs
            if size > self.max_body_bytes:
                return b"", size  # not read: the app refuses it from the header (413)
            body = await proto()
            return body, len(body)
        if scope.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return b"", 0
        chunks, received = [], 0
        async for chunk in proto:
            chunks.append(chunk)
            received += len(chunk)
            if received > self.max_body_bytes:
                return b"", received  # enough to know it is too large: 413 from the app
        return b"".join(chunks), received

    def _request(self, scope, length: int, received_at: float) -> h11.Request:
        headers = [(name, value) for name, value in scope.headers.items()
                   if name.lower() not in _NOT_FORWARDED]
        if scope.headers.get("host") is None:
            headers.append(("Host", scope.server))  # HTTP/1.0 clients may omit it
        headers.append(("Content-Length", str(length)))
        headers.append((RECEIVED_AT_HEADER, repr(received_at)))
        # granian gives the path percent-decoded (as WSGI's PATH_INFO): encode it again.
        target = quote(scope.path, safe=_PATH_SAFE) + (
            f"?{scope.query_string}" if scope.query_string else "")
        return h11.Request(method=scope.method, target=target, headers=headers)

    async def _forward(self, client: h11.Connection, head: bytes, body: bytes | None
                       ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request on a new unix connection (a sync worker answers one per connection),
        the answer read to its end. The loop's socket calls, not streams: half the cost."""
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, self.socket_path)
            if body is None:
                await loop.sock_sendall(sock, head)
                sock.shutdown(socket.SHUT_WR)  # over the limit: the app answers from the head
            else:
                # Passthrough: h11 checks the framing, the body is not copied into its buffer.
                parts = [head, *client.send_with_data_passthrough(h11.Data(data=body)),
                         client.send(h11.EndOfMessage())]
                for part in parts:
                    if part:
                        await loop.sock_sendall(sock, part)
            return await self._answer(client, loop, sock)

    async def _answer(self, client: h11.Connection, loop, sock: socket.socket
                      ) -> tuple[int, list[tuple[str, str]], bytes]:
        status, headers, parts = 0, [], []
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await loop.sock_recv(sock, _READ_BYTES))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = [(name.decode("latin-1"), value.decode("latin-1"))
                           for name, value in event.headers
                           if name.decode("latin-1") not in _NOT_RETURNED]
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the worker closed the connection before its answer")
            # h11.InformationalResponse (100 Continue): nothing to pass on

    # -- answers of the front itself --------------------------------------------------------
    def _failure(self, scope, status: int, code: str, message: str
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        body = json.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": code, "diagnostics": message}]}).encode()
        headers = [("Content-Type", "application/json"), ("Retry-After", "1")]
        origin = scope.headers.get("origin")
        if origin and "*" in self.cors_origins:
            headers.append(("Access-Control-Allow-Origin", "*"))
        elif origin and origin in self.cors_origins:
            headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return status, headers, body


def granian_options(host: str, port: int) -> dict:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings

    from cds_service.ops import server

    return {
        "address": host, "port": port, "interface": Interfaces.RSGI,
        # One process: it only moves bytes; the CPU is the workers'.
        "workers": 1, "loop": Loops.asyncio,
        "http": HTTPModes.http1, "websockets": False,
        # Headers must be in within this; bodies may trickle (they cost no worker).
        "http1_settings": HTTP1Settings(header_read_timeout=30_000,
                                        max_buffer_size=server.MAX_HEADER_BUFFER_BYTES),
        "log_dictconfig": server.log_config(), "log_access": False,
        "respawn_failed_workers": True, "respawn_interval": 0.5,
        "workers_kill_timeout": server.GRACEFUL_SECONDS,
    }


def main(argv: list[str] | None = None) -> None:
    from granian.server import Server

    parser = argparse.ArgumentParser(description="the buffering front of cds-service serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="the workers' unix socket")
    parser.add_argument("--max-body-bytes", type=int, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--cors-origin", action="append", default=[])
    args = parser.parse_args(argv)
    proxy = BufferingProxy(args.backend, args.max_body_bytes, args.timeout,
                           tuple(args.cors_origin) or ("*",))
    server = Server("cds_service.ops.front:proxy", **granian_options(args.host, args.port))
    server.serve(target_loader=lambda *_: proxy, wrap_loader=False)


if __name__ == "__main__":
    main()
