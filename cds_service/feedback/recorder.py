"""The record of what was shown: a cards-issued listener that never slows or fails a hook call.

The listener only builds a small record per card and puts it on a bounded in-process queue
(~10 us). One background thread per process drains the queue and inserts in batches: it
lingers a moment after the first record so that one transaction carries all the cards shown
meanwhile (a transaction per card cost the request thread ~2 ms of p50, through the GIL).

When the queue is full (the store is down or too slow) records are dropped and counted; a
batch that cannot be written is kept and retried with back-off. Logs name exception types and
counts only: no patient, no card text.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from prometheus_client import Counter

from cds_service.cdshooks.engine import HookResult
from cds_service.ops.privacy import fingerprint, keyed_digests, pseudonym
from cds_service.store.store import (
    FeedbackStore,
    QuietedRecord,
    ShownCard,
    StoreUnavailable,
    is_store_down,
)

log = logging.getLogger("cds_service.feedback")

RECORD_KEY_FILE = "record-hash.key"
RECORDS = Counter("cds_card_records_total", "Records of shown cards, by what became of them",
                  ["result"])  # written | dropped (queue full) | rejected (refused by the store)
_LOG_EVERY_SECONDS = 60.0

# A fork while a writer thread is inside SQLite or libpq would leave their internal locks held
# in the child for ever. Each writer holds its recorder's I/O lock while it talks to the store;
# a fork waits for those locks. (gunicorn forks from a master that never starts a writer, so
# this matters for other forking code: multiprocessing, tests.)
_recorders: weakref.WeakSet[CardRecorder] = weakref.WeakSet()
_held_over_fork: list[threading.Lock] = []


def _before_fork() -> None:
    _held_over_fork[:] = [recorder._io_lock for recorder in list(_recorders)]
    for lock in _held_over_fork:
        lock.acquire()


def _after_fork() -> None:
    for lock in _held_over_fork:
        lock.release()
    _held_over_fork.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                    after_in_child=_after_fork)


def record_hash_key(configured: bytes | None, instance_dir: Path) -> bytes:
    """The key for patient pseudonyms in the record: configured, else one kept in the instance
    folder (created once, atomically, so that all workers and restarts share it)."""
    if configured:
        return configured
    path = Path(instance_dir) / RECORD_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{RECORD_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        draft.write_bytes(secrets.token_hex(32).encode())
        draft.chmod(0o600)
        try:
            os.link(draft, path)  # fails if another worker won the race: then use theirs
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_bytes().strip()


# Put on the queue by close() to wake the writer at once.
_WAKE_UP = object()


class CardRecorder:
    """Call it with each HookResult; `flush()` waits until what was queued is written."""

    def __init__(self, store: FeedbackStore, key: bytes, *, capacity: int = 10_000,
                 batch_size: int = 500, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 linger_seconds: float = 0.5, max_backoff_seconds: float = 30.0):
        self.store = store
        self._key = key
        self._capacity = capacity
        self._batch_size = batch_size
        self._clock = clock
        self._linger = linger_seconds
        self._max_backoff = max_backoff_seconds
        self._wake = threading.Event()  # write now: flush(), close() or a full batch waiting
        self._io_lock = threading.Lock()  # held while the writer talks to the store
        _recorders.add(self)
        self.dropped = 0  # records lost because the queue was full
        self.rejected = 0  # records the database refused (a bug, not an outage)
        self.written = 0
        self._logged_drop_at = float("-inf")
        self._logged_down_at = float("-inf")
        self._stop = threading.Event()
        self._pid = -1
        self._start_lock = threading.Lock()
        self._queue: queue.Queue[ShownCard | QuietedRecord] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None

    # -- the hot path ----------------------------------------------------------------------
    def __call__(self, result: HookResult) -> None:
        if not result.issued and not result.quieted:
            return
        if self._pid != os.getpid():
            self._start()
        request = result.request
        patient = pseudonym(request.patient_id, self._key)
        now = self._clock()
        records: list[ShownCard | QuietedRecord] = []
        for issued in result.issued:
            card = issued.card
            digests = keyed_digests(issued.keys, self._key)
            records.append(ShownCard(
                issued.uuid, request.service.id, request.service.hook, request.hook_instance,
                card["indicator"], card.get("selectionBehavior"), patient, now, issued.rules,
                issued.suggestion_uuids, tuple(sorted(digests)), fingerprint(digests)))
        for quiet in result.quieted:
            records.append(QuietedRecord(
                request.service.id, quiet.card.indicator,
                fingerprint(keyed_digests(quiet.card.keys, self._key)),
                quiet.because.card_uuid, quiet.card.rules, now))
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._dropped()
        if self._queue.qsize() >= self._batch_size:
            self._wake.set()

    def _dropped(self) -> None:
        self.dropped += 1  # only ever grows; an approximate count under threads is fine
        RECORDS.labels("dropped").inc()
        if time.monotonic() - self._logged_drop_at >= _LOG_EVERY_SECONDS:
            self._logged_drop_at = time.monotonic()
            log.warning("card record queue full: %d records dropped so far", self.dropped)

    # -- the writer ------------------------------------------------------------------------
    def _start(self) -> None:
        """Start the writer in this process (again after a fork: threads do not survive one)."""
        with self._start_lock:
            if self._pid == os.getpid():
                return
            if self._pid != -1:  # forked: the parent's queue and events may hold a lock
                self._queue = queue.Queue(self._capacity)
                self._wake, self._stop = threading.Event(), threading.Event()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="card-recorder", daemon=True)
            self._thread.start()
            self._pid = os.getpid()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if first is _WAKE_UP:  # close(): stop now rather than at the next poll
                self._queue.task_done()
                continue
            self._wake.wait(self._linger)
            self._wake.clear()
            batch = [first]
            while len(batch) < self._batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            while not self._write_locked(batch):
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self._max_backoff)
            backoff = 0.5
            for _ in batch:
                self._queue.task_done()

    def _write_locked(self, batch: list[ShownCard | QuietedRecord]) -> bool:
        with self._io_lock:
            return self._write(batch)

    def _write(self, batch: list[ShownCard | QuietedRecord]) -> bool:
        """True when the batch is done with (written, or refused for good); False to retry."""
        try:
            self.store.ensure_ready()
            self._record(batch)
        except Exception as exc:  # noqa: BLE001 - a logging thread must not die
            if isinstance(exc, StoreUnavailable) or is_store_down(exc):
                self._store_down(exc, len(batch))
                return False
            if isinstance(exc, sa.exc.SQLAlchemyError):
                self._write_one_by_one(batch, exc)
            else:  # our own bug: retrying would not help
                self.rejected += len(batch)
                RECORDS.labels("rejected").inc(len(batch))
                log.error("card records could not be built for the store (%s)",
                          type(exc).__name__)
            return True
        if self._logged_down_at > float("-inf"):
            log.info("card store reachable again; %d records written", len(batch))
            self._logged_down_at = float("-inf")
        self.written += len(batch)
        RECORDS.labels("written").inc(len(batch))
        return True

    def _record(self, batch: list[ShownCard | QuietedRecord]) -> None:
        self.store.record_shown([r for r in batch if isinstance(r, ShownCard)],
                                [r for r in batch if isinstance(r, QuietedRecord)])

    def _write_one_by_one(self, batch: list[ShownCard | QuietedRecord], exc: Exception) -> None:
        """A statement error: keep every record that can be written, count the others."""
        for record in batch:
            try:
                self._record([record])
                self.written += 1
                RECORDS.labels("written").inc()
            except Exception as error:  # noqa: BLE001
                self.rejected += 1
                RECORDS.labels("rejected").inc()
                log.error("card record refused by the store (%s)", type(error).__name__)
        log.error("a card record batch failed (%s); wrote what could be", type(exc).__name__)

    def _store_down(self, exc: BaseException, waiting: int) -> None:
        if time.monotonic() - self._logged_down_at >= _LOG_EVERY_SECONDS:
            self._logged_down_at = time.monotonic()
            cause = type(getattr(exc, "orig", None) or exc).__name__
            log.warning("card store unavailable (%s: %s); %d records waiting, %d dropped",
                        type(exc).__name__, cause, waiting + self._queue.qsize(), self.dropped)

    # -- control ---------------------------------------------------------------------------
    def pending(self) -> int:
        """Records queued or being written in this process."""
        return self._queue.unfinished_tasks if self._pid == os.getpid() else 0

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        if self._pid != os.getpid():
            return True
        # Queue.join() has no timeout; this is the same wait on the queue's own condition.
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()  # no lingering: write what is queued now
                self._queue.all_tasks_done.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        try:  # a worker exiting (gunicorn max_requests) must not wait for the writer's poll
            self._queue.put_nowait(_WAKE_UP)
        except queue.Full:
            pass
        if self._thread is not None and self._pid == os.getpid():
            self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        return {"pending": self.pending(), "written": self.written, "dropped": self.dropped,
                "rejected": self.rejected}
