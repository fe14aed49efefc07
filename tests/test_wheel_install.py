"""`pip install .` (not editable) into a fresh venv serves cards.

The editable install the other tests run from reads the knowledge, the card wording, the value
sets and the migrations from the work tree, so a file left out of the package data would pass
them all. Here the sdist is built, the wheel is built from it, and both installed with the
runtime lock into a new venv outside the work tree (uv: seconds from its cache; PyPI for what
the cache lacks). Then the installed `cds-service` evaluates a fixture and serves a card.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
from conftest import FIXTURES, MANIFEST, ROOT
from fhir_server import free_port

pytestmark = pytest.mark.slow

UV = Path(sys.executable).parent / "uv"
REFERENCE = FIXTURES / "requests" / "reference-patient-view.json"


def run(*command: str | Path, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**env, "UV_NO_PROGRESS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv holding the wheel (built from the sdist) and the
    runtime lock, nothing else."""
    folder = tmp_path_factory.mktemp("wheel-install")
    run(UV, "build", "--quiet", "--out-dir", folder / "dist", ROOT, cwd=folder)
    [wheel] = (folder / "dist").glob("cds_service-*.whl")
    venv = folder / "venv"
    run(UV, "venv", "--quiet", "--python", sys.executable, venv, cwd=folder)
    python = venv / "bin" / "python"
    run(UV, "pip", "install", "--quiet", "--python", python, "--require-hashes",
        "--requirement", ROOT / "requirements-runtime.lock", cwd=folder)
    run(UV, "pip", "install", "--quiet", "--python", python, "--no-deps", wheel, cwd=folder)
    return venv / "bin"


def test_the_wheel_holds_every_file_of_the_package(installed):
    """Knowledge, value sets, card wording, migrations: whatever lies in cds_service/ is
    shipped, so a new data file cannot be forgotten in pyproject.toml's package-data."""
    [wheel] = (installed.parent.parent / "dist").glob("cds_service-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist()
               if name.startswith("cds_service/")}
    tracked = subprocess.run(["git", "ls-files", "cds_service"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked and set(tracked) <= shipped, sorted(set(tracked) - shipped)


def test_the_installed_package_is_not_the_work_tree(installed):
    where = run(installed / "python", "-c",
                "import cds_service.cli as cli; print(cli.__file__)", cwd=installed.parent)
    assert Path(where.strip()).is_relative_to(installed.parent), where
    assert not Path(where.strip()).is_relative_to(ROOT)


def test_the_installed_command_evaluates_a_fixture(installed):
    out = run(installed / "cds-service", "evaluate", REFERENCE, "--now", MANIFEST["anchor"],
              "--json", cwd=installed.parent)
    assert [card["indicator"] for card in json.loads(out)["cards"]] == ["warning"]


def test_the_installed_server_answers_a_hook_call_with_a_card(installed):
    port = free_port()
    log = installed.parent / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [str(installed / "cds-service"), "serve", "--port", str(port), "--workers", "1"],
            cwd=installed.parent, stdout=output, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        discovery = requests.get(url + "/cds-services", timeout=10).json()
        assert "calciphylaxis-patient-view" in {s["id"] for s in discovery["services"]}
        response = requests.post(url + "/cds-services/calciphylaxis-patient-view",
                                 json=json.loads(REFERENCE.read_text()), timeout=30)
        assert response.status_code == 200, response.text
        # The server takes its clock from the machine, not the fixture: the reference chart's
        # labs may have aged out of their windows, but the patient is in scope either way and
        # the drugs alone make a card (cards.toml, knowledge.toml and value sets all read).
        assert response.json()["cards"], response.text
    finally:
        server.terminate()
        server.wait(30)
