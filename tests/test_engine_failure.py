"""Our own failure is never a silent "no cards": a 500 with the JSON error shape, counted in its
own metric and logged with the call's trace id (the EHR's hookInstance)."""

from __future__ import annotations

import json

from conftest import ANCHOR, FIXTURES

from cds_service.bootstrap import create_app, create_engine
from cds_service.ops.config import Settings

PATIENT_VIEW = "/cds-services/calciphylaxis-patient-view"


class BrokenWriter:
    """Stands in for the card writer and fails, when writing cards, as a bug in it would."""

    def __init__(self, writer):
        self._writer = writer

    def __getattr__(self, name):
        if name in ("patient_view", "order_cards"):
            raise RuntimeError("a bug in the card writer")
        return getattr(self._writer, name)


def _metric(client, name: str) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and 'service="calciphylaxis-patient-view"' in line)


def test_an_exception_in_the_engine_answers_500_counted_and_logged(tmp_path, caplog):
    engine = create_engine(Settings())
    engine.writer = BrokenWriter(engine.writer)
    client = create_app(Settings(instance_dir=tmp_path), clock=lambda: ANCHOR,
                        engine=engine).test_client()
    body = json.loads((FIXTURES / "requests" / "reference-patient-view.json").read_text())
    before = _metric(client, "cds_engine_failures_total")
    caplog.set_level("ERROR", logger="cds_service")
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 500
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "exception"
    assert _metric(client, "cds_engine_failures_total") == before + 1
    failure = next(r for r in caplog.records if "failed in the engine" in r.getMessage())
    assert f"trace={body['hookInstance']}" in failure.getMessage()
    assert body["context"]["patientId"] not in failure.getMessage()  # a keyed hash, not the id
    # And the worker keeps serving.
    assert client.get("/health").status_code == 200
