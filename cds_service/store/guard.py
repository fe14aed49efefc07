"""A database call on the request path that can never cost a call more than its deadline.

Each guarded store has a circuit breaker (pybreaker): after `fail_max` failures in a row (an
error, or no answer within the deadline) the store is not called at all for `reset_seconds`;
then one trial call decides whether it is back. With a deadline, the call runs on a small
thread pool and the request waits at most that long (a hung PostgreSQL never answers, and
libpq's connect_timeout cannot go below 2 s); without one it runs inline (SQLite, bounded by
its busy timeout). The caller decides what to do instead (StoreSkipped).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import pybreaker
from prometheus_client import Counter

log = logging.getLogger("cds_service.stores")

SKIPPED = Counter("cds_store_skipped_total",
                  "Guarded store calls not answered (the caller used its fallback)",
                  ["store", "reason"])  # reason: open | timeout | error
T = TypeVar("T")


class StoreSkipped(Exception):
    """The store did not answer; `reason` is open, timeout or error."""

    def __init__(self, store: str, reason: str):
        super().__init__(f"{store}: {reason}")
        self.store, self.reason = store, reason


class _LogStateChanges(pybreaker.CircuitBreakerListener):
    def __init__(self, guard: StoreGuard):
        self.guard = guard

    def state_change(self, cb, old_state, new_state) -> None:
        name = new_state.name if new_state is not None else "?"
        if name == pybreaker.STATE_OPEN:
            log.warning("store %s not answering: not called for %.0f s (%s)", self.guard.name,
                        self.guard.reset_seconds, self.guard.fallback)
        elif name == pybreaker.STATE_CLOSED and old_state is not None:
            log.info("store %s answers again", self.guard.name)


class StoreGuard:
    def __init__(self, name: str, *, deadline_seconds: float | None, fail_max: int = 2,
                 reset_seconds: float = 30.0, fallback: str = "falling back",
                 exclude: tuple[type[BaseException], ...] = ()):
        self.name = name
        self.exclude = exclude  # the caller's own answers (e.g. a 400): raised, not counted
        self.deadline = deadline_seconds
        self.fail_max = fail_max
        self.reset_seconds = reset_seconds
        self.fallback = fallback  # said in the log line when the breaker opens
        self._pid = 0
        self._lock = threading.Lock()
        self._breaker: pybreaker.CircuitBreaker | None = None
        self._pool: ThreadPoolExecutor | None = None

    def _parts(self) -> tuple[pybreaker.CircuitBreaker, ThreadPoolExecutor | None]:
        # Neither a breaker's lock nor a pool's threads may cross a fork: one set per process.
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._breaker = pybreaker.CircuitBreaker(
                        fail_max=self.fail_max, reset_timeout=self.reset_seconds,
                        name=self.name, listeners=[_LogStateChanges(self)],
                        exclude=list(self.exclude))
                    self._pool = (ThreadPoolExecutor(2, thread_name_prefix=f"store-{self.name}")
                                  if self.deadline is not None else None)
                    self._pid = os.getpid()
        return self._breaker, self._pool

    @property
    def is_open(self) -> bool:
        return self._parts()[0].current_state == pybreaker.STATE_OPEN

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """function(*args), or StoreSkipped if the store is known down, fails or is too slow."""
        breaker, pool = self._parts()
        try:
            if pool is None:
                return breaker.call(function, *args)
            return breaker.call(self._within_deadline, pool, function, *args)
        except self.exclude:
            raise
        except pybreaker.CircuitBreakerError:
            reason = "open"
        except FutureTimeout:
            reason = "timeout"
        except Exception:  # noqa: BLE001 - any failure of the store means: use the fallback
            reason = "error"
        SKIPPED.labels(self.name, reason).inc()
        raise StoreSkipped(self.name, reason)

    def _within_deadline(self, pool: ThreadPoolExecutor, function: Callable[..., T],
                         *args: Any) -> T:
        future = pool.submit(function, *args)
        try:
            return future.result(timeout=self.deadline)
        except FutureTimeout:
            future.cancel()  # if it has not started; a running call finishes on its own
            raise
