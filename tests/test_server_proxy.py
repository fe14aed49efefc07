"""`cds-service serve --server proxy` as a real process: granian's front reads whole requests,
gunicorn's sync workers run them. Slow clients stay in the front; a killed worker is replaced;
a dead front is started again; SIGTERM stops everything cleanly."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from served import Served, SlowClients, socket_count
from test_bad_input import PATIENT_VIEW, REFERENCE_SUMMARY, patient_view

WORKERS = 2


@pytest.fixture(scope="module")
def server():
    served = Served(workers=WORKERS, server="proxy")
    served.started = time.monotonic()  # the front was up before the server answered
    yield served
    served.stop()


def hook_call(url: str) -> requests.Response:
    # 5 s: far above a call's milliseconds, far below what a held worker would cost (forever).
    return requests.post(url + PATIENT_VIEW, json=patient_view(), timeout=5)


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_fifty_slow_connections_reach_no_worker(server):
    """Each sync worker holds the socket of the client it serves; while 60 connections trickle
    their headers or body, the workers hold none more than when idle, and calls (more at once
    than there are workers) are answered. gunicorn's sync workers alone fail this with 2
    slow connections (issue 12)."""
    workers = server.worker_pids()
    assert len(workers) == WORKERS and server.front_pids()
    idle = {pid: socket_count(pid) for pid in workers}
    body = json.dumps(patient_view()).encode()
    with SlowClients(server.port, 60, PATIENT_VIEW, body) as slow:
        assert wait_for(lambda: slow.connected == 60, 10)
        time.sleep(1.5)  # a few bytes each have been sent by now
        assert {pid: socket_count(pid) for pid in workers} == idle
        with ThreadPoolExecutor(2 * WORKERS) as pool:
            answers = list(pool.map(lambda _: hook_call(server.url), range(4 * WORKERS)))
        for answer in answers:
            assert answer.status_code == 200
            assert [c["summary"] for c in answer.json()["cards"]] == [REFERENCE_SUMMARY]
        assert requests.get(server.url + "/health", timeout=5).status_code == 200
        # A worker closes its side just after the client has the answer: allow it a moment.
        assert wait_for(lambda: {pid: socket_count(pid) for pid in workers} == idle, 5)


def test_a_killed_worker_is_replaced(server):
    before = server.worker_pids()
    os.kill(before[0], signal.SIGKILL)
    assert wait_for(lambda: len(server.worker_pids()) == WORKERS
                    and before[0] not in server.worker_pids())
    for _ in range(2 * WORKERS):
        assert hook_call(server.url).status_code == 200


def test_a_dead_front_is_started_again_and_leaves_nothing_behind(server):
    from cds_service.ops.workers import FRONT_MIN_UPTIME_SECONDS

    # A front dying right after its start means it cannot start: that stops the service.
    time.sleep(max(0.0, FRONT_MIN_UPTIME_SECONDS + 1 - (time.monotonic() - server.started)))
    (front,) = server.front_pids()
    front_workers = [pid for pid in _pids() if _parent(pid) == front]
    assert front_workers
    os.kill(front, signal.SIGKILL)
    assert wait_for(lambda: server.front_pids() and front not in server.front_pids())
    assert wait_for(lambda: not [pid for pid in front_workers if _alive(pid)])

    def answers() -> bool:
        try:
            return requests.get(server.url + "/health", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    assert wait_for(answers)
    assert hook_call(server.url).status_code == 200


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_front_and_the_workers_cleanly():
    served = Served(workers=1, server="proxy")
    try:
        children = served.worker_pids() + served.front_pids()
        assert hook_call(served.url).status_code == 200
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(30) == 0
        assert not [pid for pid in children if _alive(pid)]
        log = served.log()
        assert "Granian shutdown completed" in log and "Shutting down: Master" in log
    finally:
        served.stop()


def test_a_taken_port_stops_the_service_instead_of_restarting_the_front(tmp_path):
    import socket
    import subprocess

    from served import CDS_SERVICE

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.Popen(
            [str(CDS_SERVICE), "serve", "--server", "proxy", "--port", str(port)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
            start_new_session=True)
        try:
            output, _ = process.communicate(timeout=90)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode not in (0, None)
    assert b"the front exited at start" in output
