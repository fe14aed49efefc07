"""The buffering front (ops/front.py) without granian or gunicorn: a fake RSGI scope and protocol
on one side (as in test_bridge.py), a fake worker on a real unix socket on the other, which
records what reached it and answers, or dies without answering."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import h11
import pytest
from test_bridge import Proto, Scope

from cds_service.ops.front import RECEIVED_AT_HEADER, BufferingProxy
from cds_service.ops.workers import with_received_at


class FakeWorker:
    """Answers each connection like a gunicorn sync worker (one request, then close), or with
    `die=True` reads the request and closes without a word (a worker killed mid-call)."""

    def __init__(self, path: str, die: bool = False):
        self.requests: list[tuple[h11.Request, bytes, bool]] = []  # request, body, ended
        self.die = die
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        server = h11.Connection(h11.SERVER)
        request, body, ended = None, b"", False
        while True:
            event = server.next_event()
            if event is h11.NEED_DATA:
                data = conn.recv(65536)
                if not data and request is not None:
                    break  # the front half-closed after the head: no body comes
                server.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                ended = True
                break
        self.requests.append((request, body, ended))
        if self.die:
            return
        payload = json.dumps({"got": len(body)}).encode()
        conn.sendall(server.send(h11.Response(status_code=201, headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
            ("Connection", "close"), ("Server", "gunicorn"), ("X-Extra", "1")])))
        conn.sendall(server.send(h11.Data(data=payload)) + server.send(h11.EndOfMessage()))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def socket_path(tmp_path):
    return str(tmp_path / "w.sock")


def call(proxy, scope, proto):
    asyncio.run(proxy.__rsgi__(scope, proto))
    return proto.answer


def test_a_whole_request_is_forwarded_and_the_answer_comes_back(socket_path):
    worker = FakeWorker(socket_path)
    body = b'{"hook": "patient-view"}' * 100
    scope = Scope(headers=[("content-type", "application/json"),
                           ("content-length", str(len(body))), ("x-a", "1"), ("x-a", "2"),
                           ("connection", "keep-alive"), (RECEIVED_AT_HEADER, "0.5")])
    scope.query_string = "x=%2F&y=1"
    scope.path = "/cds-services/a b%"  # granian gives it decoded
    status, headers, content = call(BufferingProxy(socket_path, 1 << 20, 10), scope,
                                    Proto([body[:100], body[100:]]))
    assert (status, json.loads(content)) == (201, {"got": len(body)})
    assert headers["x-extra"] == "1" and "server" not in headers and "connection" not in headers
    request, received, ended = worker.requests[0]
    assert received == body and ended
    assert request.target == b"/cds-services/a%20b%25?x=%2F&y=1"
    forwarded = [(k.decode(), v.decode()) for k, v in request.headers]
    assert [v for k, v in forwarded if k == "x-a"] == ["1", "2"]  # repeated headers kept
    assert "connection" not in dict(forwarded)
    stamps = [v for k, v in forwarded if k == RECEIVED_AT_HEADER]
    assert len(stamps) == 1 and stamps[0] != "0.5"  # the client's own is dropped
    worker.close()


def test_a_declared_length_over_the_limit_is_forwarded_without_its_body(socket_path):
    worker = FakeWorker(socket_path)
    scope = Scope(headers=[("content-type", "application/json"),
                           ("content-length", "5000")])
    read = []

    class Recording(Proto):
        async def __call__(self):
            read.append(1)
            return await super().__call__()

    status, _, _ = call(BufferingProxy(socket_path, 1000, 10), scope,
                        Recording([b"x" * 5000]))
    request, received, ended = worker.requests[0]
    assert dict(request.headers)[b"content-length"] == b"5000"
    assert received == b"" and not ended  # the app answers 413 from the header
    assert status == 201 and read == []
    worker.close()


def test_a_chunked_body_is_read_only_just_past_the_limit(socket_path):
    worker = FakeWorker(socket_path)
    pulled = []

    class Counting(Proto):
        def __aiter__(self):
            async def chunks():
                for chunk in self.chunks:
                    pulled.append(len(chunk))
                    yield chunk
            return chunks()

    call(BufferingProxy(socket_path, 1000, 10), Scope(headers=[]),
         Counting([b"x" * 600] * 10))
    assert sum(pulled) == 1200  # two chunks, not ten
    request, received, _ = worker.requests[0]
    assert int(dict(request.headers)[b"content-length"]) > 1000 and received == b""
    worker.close()


def test_a_worker_that_dies_mid_call_gets_its_client_a_json_503(socket_path):
    worker = FakeWorker(socket_path, die=True)
    scope = Scope(headers=[("content-length", "2"), ("origin", "https://ehr.example")])
    status, headers, content = call(BufferingProxy(socket_path, 1000, 10), scope,
                                    Proto([b"{}"]))
    assert status == 503 and headers["Retry-After"] == "1"
    assert json.loads(content)["resourceType"] == "OperationOutcome"
    assert headers["Access-Control-Allow-Origin"] == "*"
    worker.close()


def test_no_worker_socket_is_a_json_503_too(socket_path):
    proxy = BufferingProxy(socket_path, 1000, 10, cors_origins=("https://ehr.example",))
    scope = Scope(method="GET", path="/health", headers=[("origin", "https://ehr.example")])
    status, headers, _ = call(proxy, scope, Proto([]))
    assert status == 503
    assert headers["Access-Control-Allow-Origin"] == "https://ehr.example"


def test_the_worker_side_takes_the_fronts_received_time_and_only_a_sane_one():
    import time

    from cds_service.ops.rsgi_bridge import RECEIVED_AT

    seen = []
    app = with_received_at(lambda environ, start: seen.append(environ) or [])
    key = "HTTP_" + RECEIVED_AT_HEADER.upper().replace("-", "_")
    earlier = time.perf_counter() - 0.25
    app({key: repr(earlier)}, None)
    app({key: "not a number"}, None)
    app({key: repr(time.perf_counter() + 100)}, None)  # from the future: ignored
    app({}, None)
    assert seen[0][RECEIVED_AT] == earlier and key not in seen[0]
    assert all(e[RECEIVED_AT] > earlier + 0.2 for e in seen[1:])


def test_gunicorn_ends_a_stuck_worker_before_the_front_gives_up_on_it():
    """A stuck worker is gunicorn's to end (its timeout); the front waits longer, so the client
    gets the front's 503 when the worker is killed, not a timeout first."""
    from cds_service.ops.workers import FRONT_TIMEOUT_SECONDS, gunicorn_options

    options = gunicorn_options("/tmp/x.sock", 2, [])
    assert options["worker_class"] == "sync" and options["timeout"] < FRONT_TIMEOUT_SECONDS
    assert options["limit_request_field_size"] >= 64 * 1024  # the app answers 431, in JSON
