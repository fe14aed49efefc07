"""A failing FHIR server never makes the service slow or crash: 412 within the deadline."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ANCHOR, FIXTURES

from cds_service.bootstrap import create_app
from cds_service.ops.config import Settings

DEADLINE = 0.6
HITS: Counter = Counter()


class FaultyFhir(BaseHTTPRequestHandler):
    """Misbehaves according to the first path segment: /error500/..., /slow/..., etc."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        mode = self.path.strip("/").split("/")[0]
        HITS[mode] += 1
        if mode in ("error500", "error503"):
            self._send(int(mode[-3:]), b'{"resourceType":"OperationOutcome"}')
        elif mode == "close":
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
        elif mode == "slow":
            time.sleep(DEADLINE * 3)
            self._send(200, b'{"resourceType":"Bundle","type":"searchset"}')
        elif mode == "html":
            self._send(200, b"<html>login</html>", "text/html")
        elif mode == "badjson":
            self._send(200, b'{"resourceType": "Bundle", "entry": [')
        elif mode == "notfhir":
            self._send(200, b'{"hello": "world"}')
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/target/x")
            self.end_headers()
        else:
            self._send(404, b"{}")

    def _send(self, status: int, body: bytes, kind: str = "application/fhir+json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def faulty_server():
    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # the service hanging up on a slow answer is the point of these tests

    server = QuietServer(("127.0.0.1", 0), FaultyFhir)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def client():
    return create_app(Settings(fhir_deadline_seconds=DEADLINE), clock=lambda: ANCHOR).test_client()


def _without_prefetch(fhir_server: str) -> dict:
    body = json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())
    body = copy.deepcopy(body)
    del body["prefetch"]
    body["fhirServer"] = fhir_server
    body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer",
                                 "expires_in": 300, "scope": "patient/*.read", "subject": "s"}
    return body


@pytest.mark.parametrize("mode", ["error500", "error503", "close", "slow", "html", "badjson",
                                  "notfhir", "redirect", "missing"])
def test_failing_fhir_server_gives_412_within_the_deadline(client, faulty_server, mode):
    started = time.monotonic()
    response = client.post("/cds-services/calciphylaxis-patient-view",
                           json=_without_prefetch(f"{faulty_server}/{mode}"))
    elapsed = time.monotonic() - started
    assert response.status_code == 412
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert elapsed < DEADLINE + 0.3


def test_transient_503_is_retried_once_but_500_is_not(faulty_server):
    # A roomy deadline: the count of attempts must not depend on how busy the machine is.
    client = create_app(Settings(fhir_deadline_seconds=5.0), clock=lambda: ANCHOR).test_client()
    body = json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())
    del body["prefetch"]["observations"]  # exactly one search to make
    body["fhirAuthorization"] = _without_prefetch("http://x")["fhirAuthorization"]
    HITS.clear()
    for mode in ("error503", "error500"):
        body["fhirServer"] = f"{faulty_server}/{mode}"
        assert client.post("/cds-services/calciphylaxis-patient-view",
                           json=body).status_code == 412
    assert HITS["error503"] == 2
    assert HITS["error500"] == 1


def test_redirect_is_not_followed(client, faulty_server):
    HITS.clear()
    client.post("/cds-services/calciphylaxis-patient-view",
                json=_without_prefetch(f"{faulty_server}/redirect"))
    assert HITS["redirect"] > 0 and HITS["target"] == 0


def test_service_keeps_serving_after_a_slow_server(client, faulty_server):
    client.post("/cds-services/calciphylaxis-patient-view",
                json=_without_prefetch(f"{faulty_server}/slow"))
    body = json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())
    response = client.post("/cds-services/calciphylaxis-patient-view", json=body)
    assert response.status_code == 200 and response.get_json()["cards"]


def test_non_loopback_fhir_server_is_not_contacted_in_development(client):
    started = time.monotonic()
    response = client.post("/cds-services/calciphylaxis-patient-view",
                           json=_without_prefetch("http://10.255.255.1/fhir"))
    assert response.status_code == 412
    assert time.monotonic() - started < 0.2  # refused before any connection attempt
