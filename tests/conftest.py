"""Shared test fixtures: the app on a fixed clock, the knowledge, the fixture manifest."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cds_service.bootstrap import create_app, create_engine
from cds_service.knowledge import load_knowledge
from cds_service.ops.config import Settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(FIXTURES))  # for synthea_request

# The feedback tests' database fixtures: SQLite and a throwaway PostgreSQL.
pytest_plugins = ["feedback_fixtures"]

MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
# The installed console script of the interpreter running the tests (.venv, .venv313, CI's):
# beside sys.executable, whichever venv that is.
COMMAND = Path(sys.executable).parent / "cds-service"

ANCHOR = datetime.fromisoformat(MANIFEST["anchor"].replace("Z", "+00:00")).astimezone(UTC)


def load_request(case: dict) -> dict:
    """The CDS Hooks request of a manifest case (the Synthea chart is built at run time)."""
    if case["request"].startswith("synthea:"):
        from synthea_request import synthea_request

        return synthea_request(case["request"].split(":", 1)[1])
    return json.loads((FIXTURES / case["request"]).read_text())


@pytest.fixture(scope="session")
def knowledge():
    return load_knowledge()


@pytest.fixture(scope="session")
def engine():
    """The hook path without Flask, prefetch only: built by the one wiring point."""
    return create_engine()


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    # Its own instance folder: the shown-card store and its key stay out of the work tree.
    application = create_app(Settings(max_body_bytes=4 * 1024 * 1024,
                                      instance_dir=tmp_path_factory.mktemp("instance")),
                             clock=lambda: ANCHOR)
    application.config["TESTING"] = True
    return application


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def _in_process_metrics(monkeypatch):
    """`cds-service serve` run in-process (CliRunner) sets PROMETHEUS_MULTIPROC_DIR for its
    workers, and /metrics then reads that folder instead of this process's counters: every
    later metrics test would see zeros. Each test starts without it, and anything a test sets
    is undone."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
