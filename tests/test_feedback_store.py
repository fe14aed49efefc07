"""The store of shown cards and feedback, on SQLite and on a real PostgreSQL: migrations, the
background recorder, and many feedback posts at once from threads and processes."""

from __future__ import annotations

import logging
import multiprocessing
import socket
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta

import postgres_server
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from feedback_history import REASON_SYSTEM, shown_card
from feedback_workers import post_feedback

from cds_service.cdshooks.engine import HookResult
from cds_service.cdshooks.request import HookRequest
from cds_service.cdshooks.services import SERVICES
from cds_service.feedback.recorder import CardRecorder, record_hash_key
from cds_service.ops.privacy import pseudonym
from cds_service.store.schema import (
    card_feedback,
    issued_card,
    issued_card_rule,
    issued_suggestion,
    metadata,
)
from cds_service.store.store import VERSION_TABLE, FeedbackStore

KEY = b"test-record-key"
PATIENT = "patient-4711"


def hook_result(cards: list) -> HookResult:
    """A HookResult as the engine returns it, for a patient whose id must never be stored."""
    from cds_service.cards.writer import IssuedCard

    request = HookRequest(service=SERVICES["calciphylaxis-order-sign"],
                          hook_instance=str(uuid.uuid4()), patient_id=PATIENT, user_id="u1",
                          encounter_id=None, prefetch={}, draft_orders=[], selections=None,
                          fhir_server=None)
    issued = [IssuedCard(card, rules) for card, rules in cards]
    return HookResult(request, {"cards": [c.card for c in issued]}, issued)


def order_card(suggestions: int = 2) -> dict:
    card = {"uuid": str(uuid.uuid4()), "summary": "s", "indicator": "warning",
            "detail": f"Warfarin for {PATIENT}", "source": {"label": "x"}}
    if suggestions:
        card["suggestions"] = [{"uuid": str(uuid.uuid4()), "label": "swap"}
                               for _ in range(suggestions)]
        card["selectionBehavior"] = "at-most-one"
    return card


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://cds@127.0.0.1:{port}/cds"  # nothing listens there any more


def test_without_postgresql_binaries_ci_fails_loudly_and_a_laptop_skips(monkeypatch):
    monkeypatch.setattr(postgres_server, "postgres_bin", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must test against PostgreSQL"):
        postgres_server.start_postgres()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        postgres_server.start_postgres()


# -- migrations -------------------------------------------------------------------------------
def test_migrations_build_exactly_the_tables_of_the_schema(store):
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={
            "compare_type": True, "version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []


def test_migrating_again_is_a_no_op_and_keeps_the_data(store):
    store.record_shown([shown_card()])
    store.migrate()
    assert store.count(issued_card) == 1


def _migrate(url: str) -> str:
    FeedbackStore(url).migrate()
    return "ok"


def test_workers_starting_together_on_a_new_database_all_migrate(database_url):
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(3, mp_context=context) as pool:
        assert list(pool.map(_migrate, [database_url] * 3)) == ["ok"] * 3
    assert FeedbackStore(database_url).count(issued_card) == 0


def test_default_sqlite_file_is_in_wal_mode(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'cds.sqlite3'}")
    store.migrate()
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


# -- the record of shown cards ----------------------------------------------------------------
def test_a_card_recorded_twice_is_stored_once(store):
    card = shown_card(rules=("vitamin_k_antagonist", "known_calciphylaxis"))
    store.record_shown([card])
    store.record_shown([card])  # a batch retried after a lost commit acknowledgement
    assert store.count(issued_card) == 1
    assert store.count(issued_card_rule) == 2
    assert store.count(issued_suggestion) == 2


def test_recorder_stores_uuid_service_hook_rules_and_suggestions_but_not_the_patient(store):
    recorder = CardRecorder(store, KEY)
    card = order_card()
    result = hook_result([(card, ("calcium_binder", "known_calciphylaxis"))])
    recorder(result)
    assert recorder.flush(10)
    recorder.close()
    with store.read() as connection:
        row = connection.execute(sa.select(issued_card)).one()
        rules = connection.execute(sa.select(issued_card_rule.c.rule_id)).scalars().all()
        suggestions = set(connection.execute(
            sa.select(issued_suggestion.c.suggestion_uuid)).scalars())
    assert row.card_uuid == card["uuid"]
    assert (row.service_id, row.hook, row.indicator) == (
        "calciphylaxis-order-sign", "order-sign", "warning")
    assert row.hook_instance == result.request.hook_instance
    assert row.selection_behavior == "at-most-one"
    assert row.issued_at.tzinfo is not None
    assert sorted(rules) == ["calcium_binder", "known_calciphylaxis"]
    assert suggestions == {s["uuid"] for s in card["suggestions"]}
    assert row.patient_pseudonym == pseudonym(PATIENT, KEY)
    assert PATIENT not in str(tuple(row))


def test_record_key_is_made_once_and_kept_in_the_instance_folder(tmp_path):
    first = record_hash_key(None, tmp_path)
    assert first == record_hash_key(None, tmp_path) and len(first) == 64
    assert (tmp_path / "record-hash.key").stat().st_mode & 0o077 == 0
    assert record_hash_key(b"configured", tmp_path) == b"configured"


def test_recorder_writes_many_cards_in_batches(store):
    recorder = CardRecorder(store, KEY, batch_size=50)
    for _ in range(300):
        recorder(hook_result([(order_card(), ("vitamin_k_antagonist",))]))
    assert recorder.flush(30)
    recorder.close()
    assert store.count(issued_card) == 300
    assert recorder.stats() == {"pending": 0, "written": 300, "dropped": 0, "rejected": 0}


def test_recorder_with_the_store_down_drops_and_counts_and_logs_no_phi(caplog):
    caplog.set_level(logging.INFO, logger="cds_service")
    recorder = CardRecorder(FeedbackStore(closed_port_url()), KEY, capacity=5, batch_size=2,
                            max_backoff_seconds=0.2)
    card = order_card()
    started = time.perf_counter()
    for _ in range(40):
        recorder(hook_result([(card, ("vitamin_k_antagonist",))]))
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # let the writer fail at least once
    recorder.close(timeout=0.5)
    assert elapsed < 0.05, "the listener must not wait for the store"
    assert recorder.dropped >= 40 - 5 - 2
    assert recorder.written == 0
    assert "card store unavailable" in caplog.text
    assert "dropped" in caplog.text
    for secret in (PATIENT, card["uuid"], card["detail"]):
        assert secret not in caplog.text


def _record_in_child(recorder: CardRecorder, result: HookResult, results) -> None:
    recorder(result)
    results.put(recorder.flush(20))


def test_a_recorder_used_before_a_fork_records_in_the_child_too(store):
    """Threads and pooled connections do not survive a fork: the child starts its own."""
    recorder = CardRecorder(store, KEY)
    recorder(hook_result([(order_card(), ("vitamin_k_antagonist",))]))
    assert recorder.flush(10)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_record_in_child, args=(
        recorder, hook_result([(order_card(), ("calcium_binder",))]), results))
    child.start()
    assert results.get(timeout=60) is True
    child.join(30)
    recorder.close()
    assert store.count(issued_card) == 2


def test_a_fork_waits_until_the_writer_is_out_of_the_database():
    """A child forked mid-write would inherit SQLite's or libpq's locks held for ever."""
    import os
    import threading

    inside, leave = threading.Event(), threading.Event()

    class SlowStore:
        def ensure_ready(self) -> None:
            pass

        def record_shown(self, batch, quieted=()) -> None:
            inside.set()
            leave.wait(5)

    recorder = CardRecorder(SlowStore(), KEY, linger_seconds=0)
    recorder(hook_result([(order_card(), ("vitamin_k_antagonist",))]))
    assert inside.wait(5)
    threading.Timer(0.3, leave.set).start()
    started = time.monotonic()
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    assert time.monotonic() - started >= 0.25  # the fork happened after the write
    recorder.close()


def test_recorder_writes_what_waited_once_the_database_is_there(postgres):
    """PostgreSQL only: the database appears after the service started."""
    name = f"late_{uuid.uuid4().hex[:8]}"
    store = FeedbackStore(f"{postgres.base}/{name}")
    recorder = CardRecorder(store, KEY, max_backoff_seconds=0.2)
    recorder(hook_result([(order_card(), ("vitamin_k_antagonist",))]))
    time.sleep(0.3)
    assert recorder.written == 0
    with postgres._admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        assert recorder.flush(10)
        assert store.count(issued_card) == 1
    finally:
        recorder.close()
        store.dispose()
        with postgres._admin() as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# -- many feedback posts at once --------------------------------------------------------------
def test_parallel_feedback_from_threads_and_processes_is_stored_exactly_once(store, tmp_path):
    """Two processes (each an app, like two gunicorn workers) with four threads each post every
    report, in different orders and batches: each report must be stored once, none lost."""
    service_id = "calciphylaxis-order-sign"
    cards = [shown_card(service_id) for _ in range(60)]
    store.record_shown(cards)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    entries = []
    for number, card in enumerate(cards):
        when = at + timedelta(seconds=number)
        stamp = when.isoformat().replace("+00:00", "Z")
        entries.append({"card": card.card_uuid, "outcome": "accepted",
                        "acceptedSuggestions": [{"id": card.suggestion_uuids[0]}],
                        "outcomeTimestamp": stamp})
        entries.append({"card": card.card_uuid, "outcome": "overridden",
                        "overrideReason": {"reason": {"system": REASON_SYSTEM,
                                                      "code": "benefit-outweighs-risk"}},
                        "outcomeTimestamp": stamp})
        entries.append({"card": card.card_uuid, "outcome": "overridden",
                        "overrideReason": {"userComment": "discussed with the patient"},
                        "outcomeTimestamp": (when + timedelta(minutes=5)).isoformat()})
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        futures = [pool.submit(post_feedback, store.url, str(tmp_path / f"instance{n}"),
                               service_id, entries, 4, n) for n in range(2)]
        results = [future.result(timeout=300) for future in futures]
    statuses = {key for result in results for key in result if key.startswith("status_")}
    assert statuses == {"status_200"}, results
    assert sum(r["stored"] for r in results) == len(entries)  # each stored by exactly one post
    assert sum(r["duplicates"] for r in results) == len(entries)
    assert store.count(card_feedback) == len(entries)
    with store.read() as connection:
        stored = connection.execute(sa.select(card_feedback.c.card_uuid, card_feedback.c.outcome,
                                              card_feedback.c.user_comment)).all()
    assert len(set(stored)) == len(entries)
    assert {row.card_uuid for row in stored} == {card.card_uuid for card in cards}


def test_closing_the_recorder_does_not_wait_for_the_writers_poll(store):
    """A worker recycled by gunicorn closes its recorder: that must not stall a request."""
    import time

    recorder = CardRecorder(store, KEY)
    recorder(hook_result([(order_card(), ("calcium_binder",))]))
    assert recorder.flush(10)
    started = time.monotonic()
    recorder.close()
    assert time.monotonic() - started < 0.2
    assert not recorder._thread.is_alive()


def test_the_pseudonym_key_can_live_outside_the_instance_folder(tmp_path, monkeypatch):
    """Issue 12: a copy of instance/ (database and key together) allowed re-identification by
    trying patient ids. A key file (or the environment) keeps the key elsewhere."""
    from cds_service.bootstrap import create_app
    from cds_service.ops.config import ConfigError, load_settings

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "record.key").write_text("0123456789abcdef0123456789abcdef\n")
    config = tmp_path / "service.toml"
    config.write_text('instance_dir = "instance"\npublic_base_url = "http://localhost/"\n'
                      'record_hash_key_file = "secrets/record.key"\n')
    monkeypatch.delenv("CDS_RECORD_HASH_KEY", raising=False)
    settings = load_settings(config)
    assert settings.record_hash_key == b"0123456789abcdef0123456789abcdef"
    create_app(settings)
    assert not (tmp_path / "instance" / "record-hash.key").exists()
    monkeypatch.setenv("CDS_RECORD_HASH_KEY_FILE", str(secrets_dir / "record.key"))
    assert load_settings(None).record_hash_key == b"0123456789abcdef0123456789abcdef"
    (secrets_dir / "record.key").write_text("short")
    with pytest.raises(ConfigError, match="fewer than"):
        load_settings(config)
