"""The JWT replay cache in the shared database, for several hosts behind a load balancer.

Same contract as replay.ReplayCache (each (iss, jti) accepted once until it expires), but the
table lives in the configured database (`database_url`, PostgreSQL for several hosts), so a token
used on one host is refused on every other. The primary key lets the database decide which of
two simultaneous uses came first. Errors are raised: resilient_replay.py then asks the host's
own SQLite cache (replays caught within the host only), behind a deadline and a breaker.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cds_service.store.schema import seen_jti
from cds_service.store.store import FeedbackStore


class SharedReplayCache:
    def __init__(self, store: FeedbackStore, *, prune_every_seconds: float = 60.0):
        self.store = store
        self._prune_every = prune_every_seconds
        self._pruned_at = float("-inf")
        dialect = postgresql if store.dialect == "postgresql" else sqlite
        self._insert = dialect.insert

    def first_use(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        """Record the token id; False if a live record of it already exists (a replay)."""
        statement = self._insert(seen_jti).values(iss=iss, jti=jti, expires_at=expires_at)
        statement = statement.on_conflict_do_update(
            index_elements=[seen_jti.c.iss, seen_jti.c.jti],
            set_={"expires_at": statement.excluded.expires_at},
            where=seen_jti.c.expires_at < now,  # an expired record may be reused
        ).returning(seen_jti.c.jti)  # a row comes back only when this use was recorded
        self.store.ensure_ready()
        with self.store.write() as connection:
            if now - self._pruned_at >= self._prune_every:
                connection.execute(sa.delete(seen_jti).where(seen_jti.c.expires_at < now))
                self._pruned_at = now
            return connection.execute(statement).first() is not None

    def count(self) -> int:
        return self.store.count(seen_jti)

    def close(self) -> None:
        self.store.dispose()
