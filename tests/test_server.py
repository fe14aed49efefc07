"""Issue 12, the server as shipped (`cds-service serve`, a real process), with each of its
servers (granian's workers; the proxy: granian's front before gunicorn's sync workers): slow
clients do not hold the workers, every log line is JSON, body limits hold behind the front."""

from __future__ import annotations

import json
import socket

import pytest
import requests
from served import Served, SlowClients
from test_bad_input import PATIENT_VIEW, REFERENCE_SUMMARY, patient_view

SERVERS = ("granian", "proxy")


@pytest.fixture(scope="module", params=SERVERS)
def server(request):
    served = Served(workers=2, server=request.param)
    served.kind = request.param
    yield served
    served.stop()


def hook_call(url: str, timeout: float = 10.0) -> requests.Response:
    return requests.post(url + PATIENT_VIEW, json=patient_view(), timeout=timeout)


def test_slow_clients_do_not_hold_the_workers(server):
    """Before: with 2 sync workers, 2 connections trickling their headers stopped every call,
    /health included. Now 40 trickling connections (headers or body) cost the workers nothing;
    the calls below would time out (10 s) if any worker were held."""
    body = json.dumps(patient_view()).encode()
    with SlowClients(server.port, 40, PATIENT_VIEW, body) as slow:
        for _ in range(6):  # more calls than workers: each worker answers several
            assert requests.get(server.url + "/health", timeout=10).status_code == 200
            answer = hook_call(server.url)
            assert answer.status_code == 200
            assert [c["summary"] for c in answer.json()["cards"]] == [REFERENCE_SUMMARY]
        assert slow.connected == 40


def test_a_declared_body_over_the_limit_is_refused_unread_with_json(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall((f"POST {PATIENT_VIEW} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      "application/json\r\nContent-Length: 99999999999\r\n\r\n{").encode())
        head = sock.recv(65536).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413")
    assert "OperationOutcome" in head


@pytest.mark.parametrize("kind", SERVERS)
def test_a_chunked_body_over_the_limit_is_refused_with_json(kind):
    served = Served(workers=1, server=kind)  # development defaults: 16 MiB
    try:
        def chunks():
            piece = b" " * (1024 * 1024)
            for _ in range(17):
                yield piece

        answer = requests.post(served.url + PATIENT_VIEW, data=chunks(), timeout=30,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 413
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert hook_call(served.url).status_code == 200
    finally:
        served.stop()


def test_oversized_headers_get_the_services_json_431(server):
    answer = requests.post(server.url + PATIENT_VIEW, json=patient_view(), timeout=10,
                           headers={"X-Padding": "a" * 20000, "Origin": "https://ehr.example"})
    assert answer.status_code == 431
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "Access-Control-Allow-Origin" in answer.headers


def test_every_log_line_is_json_the_servers_too(server):
    hook_call(server.url)
    requests.post(server.url + PATIENT_VIEW, data=b"{", timeout=10,
                  headers={"Content-Type": "application/json"})
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert any('"_granian' in line for line in lines)  # the server's own lines are there
    if server.kind == "proxy":
        assert any('"gunicorn.error"' in line for line in lines)
    for line in lines:
        record = json.loads(line)  # raises on a plain-text line
        assert {"time", "level", "name", "message"} <= set(record)
