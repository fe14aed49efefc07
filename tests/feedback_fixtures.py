"""Fixtures of the feedback tests: the same tests run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import pytest
from postgres_server import start_postgres

from cds_service.store.store import FeedbackStore


@pytest.fixture(scope="session")
def postgres():
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """An empty database of each kind (a fresh PostgreSQL database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cds.sqlite3'}"
        return
    with request.getfixturevalue("postgres").database() as url:
        yield url


@pytest.fixture()
def store(database_url):
    store = FeedbackStore(database_url)
    store.migrate()
    yield store
    store.dispose()
