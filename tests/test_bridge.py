"""The RSGI bridge between granian and the Flask app, and the stuck-worker watchdog, without a
server: a fake RSGI scope and protocol stand in for granian's."""

from __future__ import annotations

import asyncio
import json

from test_bad_input import PATIENT_VIEW, REFERENCE_SUMMARY, patient_view

from cds_service.ops.rsgi_bridge import RECEIVED_AT, RsgiBridge
from cds_service.ops.watchdog import EXIT_STUCK, StuckWorkerWatchdog


class Headers(list):
    def get(self, key, default=None):
        return next((v for k, v in self if k == key), default)

    def items(self):
        return list(self)


class Scope:
    def __init__(self, method="POST", path=PATIENT_VIEW, headers=()):
        self.method, self.path, self.query_string = method, path, ""
        self.server, self.client, self.scheme, self.http_version = (
            "127.0.0.1:8080", "127.0.0.1:5000", "http", "1.1")
        self.headers = Headers(headers)


class Proto:
    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks
        self.answer = None

    async def __call__(self):
        return b"".join(self.chunks)

    def __aiter__(self):
        async def chunks():
            for chunk in self.chunks:
                yield chunk
        return chunks()

    def response_bytes(self, status, headers, body):
        self.answer = (status, dict(headers), body)


def call(bridge, scope, proto):
    asyncio.run(bridge.__rsgi__(scope, proto))
    return proto.answer


def test_a_whole_request_reaches_the_app_and_its_answer_comes_back(app):
    body = json.dumps(patient_view()).encode()
    status, headers, content = call(RsgiBridge(app, 1 << 20), Scope(headers=[
        ("content-type", "application/json"), ("content-length", str(len(body)))]),
        Proto([body[:1000], body[1000:]]))
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert [c["summary"] for c in json.loads(content)["cards"]] == [REFERENCE_SUMMARY]


def test_a_declared_length_over_the_limit_is_not_read_and_is_a_json_413(app):
    limit = app.config["MAX_CONTENT_LENGTH"]  # the bridge is given the app's own limit

    class Unread(Proto):
        async def __call__(self):
            raise AssertionError("a body declared over the limit must not be read")

    status, _headers, content = call(RsgiBridge(app, limit), Scope(headers=[
        ("content-type", "application/json"), ("content-length", str(limit + 1))]), Unread([]))
    assert status == 413 and json.loads(content)["resourceType"] == "OperationOutcome"


def test_a_chunked_body_is_read_only_just_past_the_limit(app):
    read = []

    class Counting(Proto):
        def __aiter__(self):
            async def chunks():
                for chunk in self.chunks:
                    read.append(chunk)
                    yield chunk
            return chunks()

    limit = app.config["MAX_CONTENT_LENGTH"]
    chunk = b" " * (limit // 7 + 1)
    status, _headers, content = call(RsgiBridge(app, limit), Scope(headers=[
        ("content-type", "application/json")]), Counting([chunk] * 100))
    assert status == 413 and len(read) == 7


def test_the_environ_joins_repeated_headers_and_marks_when_the_request_was_in(app):
    seen = {}

    def wsgi(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    call(RsgiBridge(wsgi, 1000), Scope("GET", "/x", [("x-a", "1"), ("x-a", "2"),
                                                     ("host", "h")]), Proto([]))
    assert seen["HTTP_X_A"] == "1, 2" and seen["HTTP_HOST"] == "h"
    assert isinstance(seen[RECEIVED_AT], float)


def test_worker_exit_callbacks_all_run_even_if_one_fails():
    ran = []

    def failing():
        raise RuntimeError("boom")

    RsgiBridge(None, 1, on_worker_exit=[failing, lambda: ran.append(1)]).__rsgi_del__(None)
    assert ran == [1]


def test_the_watchdog_ends_a_worker_stuck_in_one_call():
    exits = []
    busy = {"since": None}
    watchdog = StuckWorkerWatchdog(lambda: busy["since"], timeout_seconds=30,
                                   exit_process=exits.append)
    assert not watchdog.check() and exits == []
    busy["since"] = 0.0  # monotonic zero: long ago
    assert watchdog.check() and exits == [EXIT_STUCK]


def test_every_eighth_answer_on_a_connection_closes_it(app):
    """Kept-alive connections are placed afresh now and then: a worker accepts even while busy,
    so for ever-kept connections could pile onto one worker and leave the other idle."""
    from cds_service.ops.rsgi_bridge import REUSES_PER_CONNECTION

    bridge = RsgiBridge(app, 1000)
    closes = []
    for _ in range(3 * REUSES_PER_CONNECTION):
        _status, headers, _content = call(bridge, Scope("GET", "/health"), Proto([]))
        closes.append(headers.get("Connection") == "close")
    assert closes == ([False] * (REUSES_PER_CONNECTION - 1) + [True]) * 3
    other = Scope("GET", "/health")
    other.client = "127.0.0.1:5001"  # another connection keeps its own count
    assert call(bridge, other, Proto([]))[1].get("Connection") is None
