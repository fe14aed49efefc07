"""The JWT replay check that never fails a hook call because a store cannot answer.

Every token id is first remembered in this worker's memory (a dict, bounded). Then the stores
are asked in order, each behind a StoreGuard (deadline and circuit breaker): the shared
database (several hosts), then the host's SQLite file (this host's workers). The first that
answers decides, together with memory. When none answers (disk full, read-only, locked, a hung
PostgreSQL), the call goes on with the memory check alone: a replay to the same worker is still
refused; one to another worker or host is not caught until a store answers again. That is
counted (cds_replay_memory_only_total) and logged, once a minute at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Protocol

from prometheus_client import Counter

from cds_service.store.guard import StoreGuard, StoreSkipped

log = logging.getLogger("cds_service.auth.verifier")

MEMORY_ONLY = Counter("cds_replay_memory_only_total",
                      "Token ids checked against this worker's memory only (no store answered)")
_LOG_EVERY_SECONDS = 60.0


class ReplayStore(Protocol):
    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool: ...


class MemoryReplayCache:
    """(iss, jti) -> expiry in this process; the oldest entries go first past `max_entries`."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        key = (iss, jti)
        with self._lock:
            known = self._seen.get(key)
            if known is not None and known >= now:
                return False
            self._seen[key] = expires_at
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        return len(self._seen)


class ResilientReplayCache:
    def __init__(self, stores: list[tuple[ReplayStore, StoreGuard]],
                 memory: MemoryReplayCache | None = None):
        self.stores = stores
        self.memory = memory or MemoryReplayCache()
        self._logged_at = float("-inf")

    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        fresh_here = self.memory.first_use(iss, jti, expires_at, now)
        skipped: list[StoreSkipped] = []
        for store, guard in self.stores:
            try:
                return guard.call(store.first_use, iss, jti, expires_at, now) and fresh_here
            except StoreSkipped as exc:
                skipped.append(exc)
        MEMORY_ONLY.inc()
        if time.monotonic() - self._logged_at >= _LOG_EVERY_SECONDS:
            self._logged_at = time.monotonic()
            log.warning("no JWT replay store answered (%s): checking replays in this worker's "
                        "memory only", ", ".join(map(str, skipped)) or "none configured")
        return fresh_here

    def count(self) -> int:
        """Rows in the first store (for tests and operators)."""
        return self.stores[0][0].count()

    def close(self) -> None:
        for store, _guard in self.stores:
            store.close()
