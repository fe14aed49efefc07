"""The JWT replay cache: each (iss, jti) is accepted once until the token expires.

The workers of one host share it through one SQLite file (WAL mode): the UNIQUE key makes the
database, not the workers, decide which of two simultaneous uses is first. Several hosts behind
a load balancer share the table in the configured database instead (shared_replay.py), since
each host's file only sees its own traffic.

Errors (disk full, read-only, locked past the short busy timeout) are raised: the caller
(resilient_replay.py) falls back, so nothing here may wait long or refuse to start.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

# Two workers inserting token ids wait on each other for microseconds; a longer wait is a lock
# held by something else, and the check falls back rather than delay the call.
BUSY_TIMEOUT_SECONDS = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen_jti (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at REAL NOT NULL,
    UNIQUE (iss, jti)
);
CREATE INDEX IF NOT EXISTS seen_jti_expiry ON seen_jti (expires_at);
"""

# An expired row may linger until the next prune; the WHERE lets it be reused, any live row wins.
_RECORD = """
INSERT INTO seen_jti (iss, jti, expires_at) VALUES (?, ?, ?)
ON CONFLICT (iss, jti) DO UPDATE SET expires_at = excluded.expires_at
WHERE seen_jti.expires_at < ?
"""


class ReplayCache:
    """Remembers token ids until they expire; `first_use` is False for a replay."""

    def __init__(self, path: Path, *, prune_every_seconds: float = 60.0,
                 busy_timeout_seconds: float = BUSY_TIMEOUT_SECONDS):
        self.path = Path(path)
        self._prune_every = prune_every_seconds
        self._busy_timeout = busy_timeout_seconds
        self._pruned_at = float("-inf")
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._schema_ready = False
        # Created and closed here: `serve` builds the app in its main process, and an open
        # connection must not be inherited by the forked workers (each opens its own). A file
        # that cannot be written now (full disk, read-only) is retried on first use.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=self._busy_timeout)) as setup:
                self._set_up(setup)
        except (OSError, sqlite3.Error):
            pass

    def _set_up(self, connection: sqlite3.Connection) -> None:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        self._schema_ready = True

    def _connect(self) -> sqlite3.Connection:
        # A connection must not cross a fork: the server forks workers after the app is built.
        if self._connection is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self._busy_timeout,
                                         isolation_level=None, check_same_thread=False)
            if not self._schema_ready:
                self._set_up(connection)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL mode
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        """Record the token id; False if a live record of it already exists (a replay)."""
        with self._lock:
            connection = self._connect()
            if now - self._pruned_at >= self._prune_every:
                connection.execute("DELETE FROM seen_jti WHERE expires_at < ?", (now,))
                self._pruned_at = now
            cursor = connection.execute(_RECORD, (iss, jti, expires_at, now))
            return cursor.rowcount == 1

    def count(self) -> int:
        """Rows stored (for tests and operators)."""
        with self._lock:
            return self._connect().execute("SELECT COUNT(*) FROM seen_jti").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None
