"""Health, readiness, Prometheus metrics and logs: what operators see, and no patient data."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

from conftest import FIXTURES

PATIENT_VIEW = "/cds-services/calciphylaxis-patient-view"


def _reference() -> dict:
    return json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())


def _metric(client, name: str, **labels) -> float:
    """The value of one sample in the /metrics text (0 when absent)."""
    text = client.get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if not labels and line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
        if line.startswith(f"{name}{{") and line.split("}")[0].count("=") == len(labels):
            present = dict(part.split("=", 1) for part in line[len(name) + 1:].split("}")[0]
                           .split(","))
            if all(present.get(k) == f'"{v}"' for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_and_readiness_answer(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["failing"] == []


def test_readiness_fails_when_a_check_fails(app):
    from flask import Flask

    from cds_service.web import health

    probe = Flask("probe")
    health.init_app(probe, ready_checks={"store": lambda: False}, service_ids=())
    response = probe.test_client().get("/ready")
    assert response.status_code == 503 and response.get_json()["failing"] == ["store"]


def test_hook_calls_and_cards_are_counted_by_service_status_and_indicator(client):
    before_calls = _metric(client, "cds_hook_requests_total",
                           service="calciphylaxis-patient-view", status="200")
    before_cards = _metric(client, "cds_cards_total", service="calciphylaxis-patient-view",
                           indicator="warning")
    assert client.post(PATIENT_VIEW, json=_reference()).status_code == 200
    assert _metric(client, "cds_hook_requests_total", service="calciphylaxis-patient-view",
                   status="200") == before_calls + 1
    assert _metric(client, "cds_cards_total", service="calciphylaxis-patient-view",
                   indicator="warning") == before_cards + 1
    assert _metric(client, "cds_hook_request_seconds_count",
                   service="calciphylaxis-patient-view", status="200") >= 1


def test_errors_are_counted_and_unknown_ids_do_not_create_series(client):
    before = _metric(client, "cds_hook_requests_total", service="unknown", status="404")
    client.post("/cds-services/no-such-service-1234", json={})
    assert _metric(client, "cds_hook_requests_total", service="unknown",
                   status="404") == before + 1
    assert "no-such-service-1234" not in client.get("/metrics").get_data(as_text=True)


def test_metrics_of_several_worker_processes_are_aggregated(tmp_path):
    """Under gunicorn every worker is a process: the multiprocess collector sums them."""
    script = (
        "import json, sys\n"
        "from cds_service.bootstrap import create_app\n"
        "c = create_app().test_client()\n"
        f"body = json.load(open({str(FIXTURES / 'requests' / 'reference-patient-view.json')!r}))\n"
        "assert c.post('/cds-services/calciphylaxis-patient-view', json=body).status_code == 200\n"
        "if sys.argv[1] == 'report':\n"
        "    print(c.get('/metrics').get_data(as_text=True))\n"
    )
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    subprocess.run([sys.executable, "-c", script, "worker"], env=env, check=True)
    out = subprocess.run([sys.executable, "-c", script, "report"], env=env, check=True,
                         capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("cds_cards_total{")
                and 'indicator="warning"' in x)
    assert float(line.rsplit(" ", 1)[1]) == 2.0


def test_hook_logs_carry_no_patient_identifiers_or_values(client, caplog):
    body = _reference()
    caplog.set_level(logging.INFO)
    client.post(PATIENT_VIEW, json=body)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "hook calciphylaxis-patient-view" in logged
    assert body["context"]["patientId"] not in logged
    assert "1514" not in logged and "calcium acetate" not in logged


def test_json_log_lines_are_json(capsys):
    from cds_service.ops.observability import json_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        json_logging()
        logging.getLogger("cds_service").info("hook %s status=%d", "x", 200)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["message"] == "hook x status=200" and record["level"] == "INFO"
    finally:
        root.handlers[:], root.level = saved


def test_authentication_failures_are_counted(tmp_path):
    from cds_service.bootstrap import create_app
    from cds_service.ops.config import Settings, TrustedClient

    settings = Settings(
        development=False, public_base_url="http://localhost/", instance_dir=tmp_path,
        clients=(TrustedClient(iss="https://ehr.example.org", jwks={"keys": []}),))
    client = create_app(settings).test_client()
    before = _metric(client, "cds_auth_failures_total")
    assert client.get("/cds-services").status_code == 401
    assert _metric(client, "cds_auth_failures_total") == before + 1
