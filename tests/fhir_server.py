"""Start a real FHIR R4 server (sekmet-fhir, on SQLite) on a free loopback port for tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

TOKEN = "integration-test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SekmetServer:
    """A sekmet-fhir process with bearer-token auth, so tests prove the token is sent."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.workdir = workdir
        settings = workdir / "settings.yaml"
        # JSON is YAML: the simulator is off because it rewrites MedicationRequests.
        settings.write_text(json.dumps({
            "host": "127.0.0.1", "port": self.port, "base_url": self.base,
            "data_dir": str(workdir / "data"), "simulator": {"enabled": False},
            "server_auth": {"types": ["bearer"], "tokens": [TOKEN]}, "log_inbound": False,
        }))
        sekmet = Path(sys.executable).with_name("sekmet")
        self.log = open(workdir / "sekmet.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([str(sekmet), "serve", "-c", str(settings)],
                                        cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {TOKEN}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"sekmet exited: {(self.workdir / 'sekmet.log').read_text()}")
            try:
                if self.session.get(f"{self.base}/metadata", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("sekmet did not start in time")

    def load(self, bundle: dict) -> None:
        response = self.session.post(self.base, json=bundle, timeout=120,
                                     headers={"Content-Type": "application/fhir+json"})
        response.raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
