"""Where shown cards and feedback live: SQLite by default, PostgreSQL via `database_url`.

One `FeedbackStore` per process. Schema changes go through the Alembic migrations shipped in
`migrations/`, applied at start; the tables themselves are in `schema.py`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url

from cds_service.errors import ServiceError
from cds_service.store.schema import (
    card_feedback,
    early_feedback,
    issued_card,
    issued_card_rule,
    issued_suggestion,
    quieted_card,
)

log = logging.getLogger("cds_service.feedback")

DEFAULT_DATABASE_FILE = "cds.sqlite3"
# A write waits at most this long for another's lock (SQLite busy timeout): far below the EHR's
# patience and the worker timeout; the recorder retries, a feedback call answers 503.
SQLITE_BUSY_SECONDS = 0.25
# Migrating at start waits longer: several workers (or replicas) starting at once queue behind
# the first one's `upgrade head`, which on a busy machine takes more than the call-time limit.
SQLITE_MIGRATION_BUSY_SECONDS = 15.0
# PostgreSQL: libpq's connect_timeout cannot go below 2 s; statements end after 1 s. Calls on
# the request path are also bounded by their StoreGuard's deadline.
PG_CONNECT_TIMEOUT_SECONDS = 2
PG_STATEMENT_TIMEOUT_MS = 1000
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "feedback_alembic_version"
# Serialises concurrent `upgrade head` of several workers starting at once on PostgreSQL.
_MIGRATION_LOCK_ID = 0x43445346  # "CDSF"


class StoreUnavailable(ServiceError):
    """The database cannot be reached (503); the hook calls go on without it."""

    status = 503
    code = "transient"
    headers = (("Retry-After", "30"),)


def is_store_down(exc: BaseException) -> bool:
    """Connection-level failures (worth retrying later), as opposed to a bad statement."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or bool(
        getattr(exc, "connection_invalidated", False))


def database_url(configured: str | None, instance_dir: Path) -> str:
    """The configured URL, else the SQLite file in the instance folder (relative to the cwd)."""
    if configured:
        return configured
    return f"sqlite:///{(Path(instance_dir) / DEFAULT_DATABASE_FILE).resolve()}"


def make_engine(url: str, *, request_path: bool = False,
                sqlite_busy_seconds: float = SQLITE_BUSY_SECONDS) -> Engine:
    """The store's engine. `request_path`: PostgreSQL reads made during a hook call, where each
    round trip counts: autocommit (no BEGIN, no ROLLBACK) and no ping before each use (a dead
    connection fails the read, its guard shows every card, and the pool reconnects)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, sqlite_busy_seconds)
    if request_path:
        return sa.create_engine(parsed, hide_parameters=True, pool_size=2,
                                isolation_level="AUTOCOMMIT",
                                connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS,
                                              "options": f"-c statement_timeout="
                                                         f"{PG_STATEMENT_TIMEOUT_MS}"})
    # hide_parameters: SQL errors are logged, and parameters are no business of a log.
    return sa.create_engine(parsed, hide_parameters=True, pool_pre_ping=True, pool_size=5,
                            connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS,
                                          "options": f"-c statement_timeout="
                                                     f"{PG_STATEMENT_TIMEOUT_MS}"})


def _sqlite_engine(url, busy_seconds: float) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, hide_parameters=True,
                              connect_args={"timeout": busy_seconds,
                                            "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # SQLAlchemy emits BEGIN itself (below): sqlite3's implicit BEGIN comes too late to
        # take the write lock before a read, which deadlocks two read-then-write transactions.
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL mode
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(connection.get_execution_options().get(
            "cds_sqlite_begin", "BEGIN"))

    return engine


@dataclass(frozen=True)
class ShownCard:
    """One card as shown: what analytics needs, and nothing that identifies the patient."""

    card_uuid: str
    service_id: str
    hook: str
    hook_instance: str | None
    indicator: str
    selection_behavior: str | None
    patient_pseudonym: str
    issued_at: datetime
    rules: tuple[str, ...]
    suggestion_uuids: tuple[str, ...]
    evidence_keys: tuple[str, ...] = ()  # keyed hashes (ops/privacy.keyed_digests)
    fingerprint: str | None = None


@dataclass(frozen=True)
class QuietedRecord:
    """A card not shown because the clinician had overridden one about the same things."""

    service_id: str
    indicator: str
    fingerprint: str
    acknowledged_card_uuid: str
    rules: tuple[str, ...]
    quieted_at: datetime


@dataclass(frozen=True)
class OverrideRow:
    """A card of this patient's whose latest outcome is an override, within the period asked."""

    card_uuid: str
    hook: str
    evidence_keys: frozenset[str]
    outcome_at: datetime
    reason_system: str | None
    reason_code: str | None
    reason_display: str | None


@dataclass(frozen=True)
class KnownCard:
    """What feedback is checked against."""

    card_uuid: str
    service_id: str
    selection_behavior: str | None
    suggestion_uuids: frozenset[str]


def suggestion_misfits(outcome: str, accepted: Sequence[str],
                       card: KnownCard) -> list[tuple[str, str]]:
    """Why an outcome does not fit its card, as (where, message) pairs: an accepted outcome must
    name the card's own suggestions, and only one of an at-most-one card. `where` extends the
    entry's location ("", or ".acceptedSuggestions[0].id")."""
    if outcome != "accepted":
        return []
    misfits = [(f".acceptedSuggestions[{position}].id",
                f"{suggestion} is not a suggestion of card {card.card_uuid}")
               for position, suggestion in enumerate(accepted)
               if suggestion not in card.suggestion_uuids]
    if card.suggestion_uuids and not accepted:
        misfits.append((".acceptedSuggestions", "must name the suggestion that was accepted"))
    if card.selection_behavior == "at-most-one" and len(accepted) > 1:
        misfits.append((".acceptedSuggestions",
                        "names several suggestions of an at-most-one card"))
    return misfits


# On the request path (override quieting): a text statement, built once, costs a fraction of
# composing the select on every call (~0.1 ms against ~0.5 ms, bench/quieting.py).
# The override look-up runs on the hook path: straight on the driver's connection. Through
# SQLAlchemy's execution and result layers it cost ~1.3 ms p50 inside a hook call (cold caches
# after the card was written) against ~0.3 ms for the same statement on the driver
# (bench/quieting.py). The pool still lends and takes back the connection.
_RECENT_OUTCOMES_SQL = (
    "SELECT c.card_uuid, c.hook, c.evidence_keys, f.outcome, f.outcome_at, f.reason_system, "
    "f.reason_code, f.reason_display FROM issued_card c "
    "JOIN card_feedback f ON f.card_uuid = c.card_uuid "
    "WHERE c.patient_pseudonym = {p} AND c.issued_at >= {p} "
    "ORDER BY f.outcome_at DESC, f.id DESC LIMIT {p}")
_PARAMETER = {"qmark": "?", "format": "%s", "pyformat": "%s"}
# How SQLAlchemy's DateTime stores a (naive UTC) time in SQLite: text that sorts as it reads.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC)


def _keys(value: str | list | None) -> frozenset[str]:
    return frozenset(json.loads(value) if isinstance(value, str) else value or ())


class FeedbackStore:
    def __init__(self, url: str):
        self.url = url
        self._engine = make_engine(url)
        # PostgreSQL reads on the hook path get an engine of their own (made on first use).
        self._reader: Engine | None = None
        self._reader_pid = 0
        self._pid = os.getpid()
        self._ready = False
        self._ready_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @property
    def engine(self) -> Engine:
        # Pooled connections must not cross a fork (gunicorn workers, multiprocessing).
        if self._pid != os.getpid():
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        return self._engine

    @property
    def reader(self) -> Engine:
        """For short reads during a hook call (override recall)."""
        if self.dialect == "sqlite":
            return self.engine
        if self._reader is None or self._reader_pid != os.getpid():
            if self._reader is not None:
                self._reader.dispose(close=False)
            self._reader, self._reader_pid = make_engine(self.url, request_path=True), \
                os.getpid()
        return self._reader

    def display_url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    # -- schema ----------------------------------------------------------------------------
    def migrate(self) -> None:
        """`alembic upgrade head` on this database; safe when several processes start at once."""
        # Alembic's INFO lines are for its own command line; we log one line when it upgrades.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        engine = (make_engine(self.url, sqlite_busy_seconds=SQLITE_MIGRATION_BUSY_SECONDS)
                  if self.dialect == "sqlite" else self.engine)
        try:
            self._upgrade(engine, config)
        finally:
            if engine is not self.engine:
                engine.dispose()
        self._ready = True

    def _upgrade(self, engine: Engine, config) -> None:
        from alembic import command
        from alembic.migration import MigrationContext

        with self.write(engine) as connection:
            if self.dialect == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"),
                                   {"id": _MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection

            def revision() -> str | None:
                return MigrationContext.configure(connection, opts={
                    "version_table": VERSION_TABLE}).get_current_revision()

            before = revision()
            command.upgrade(config, "head")
            after = revision()
        if before != after:
            log.info("feedback store %s migrated from %s to %s", self.display_url(),
                     before or "empty", after)

    def ensure_ready(self) -> None:
        """Migrate once per process, retrying on later calls if the database was down."""
        if self._ready:
            return
        with self._ready_lock:
            if not self._ready:
                try:
                    self.migrate()
                except sa.exc.SQLAlchemyError as exc:
                    if is_store_down(exc):
                        raise StoreUnavailable("the feedback store is unavailable") from exc
                    raise

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def write(self, engine: Engine | None = None) -> Iterator[Connection]:
        """A transaction that will write: on SQLite it takes the write lock up front."""
        engine = engine or self.engine
        if self.dialect == "sqlite":
            engine = engine.execution_options(cds_sqlite_begin="BEGIN IMMEDIATE")
        with engine.begin() as connection:
            yield connection

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def _insert_ignoring_duplicates(self, table: sa.Table, keys: Sequence[str]):
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        return insert(table).on_conflict_do_nothing(index_elements=list(keys))

    # -- shown cards -----------------------------------------------------------------------
    def record_shown(self, cards: Sequence[ShownCard],
                     quieted: Sequence[QuietedRecord] = ()) -> None:
        """Insert a batch in one transaction; a card already recorded (a retry) is skipped."""
        if quieted:
            with self.write() as connection:
                connection.execute(sa.insert(quieted_card), [
                    {"service_id": q.service_id, "indicator": q.indicator,
                     "fingerprint": q.fingerprint,
                     "acknowledged_card_uuid": q.acknowledged_card_uuid, "rules": list(q.rules),
                     "quieted_at": q.quieted_at} for q in quieted])
        if not cards:
            return
        rows = [{"card_uuid": c.card_uuid, "service_id": c.service_id, "hook": c.hook,
                 "hook_instance": c.hook_instance, "indicator": c.indicator,
                 "selection_behavior": c.selection_behavior,
                 "patient_pseudonym": c.patient_pseudonym, "issued_at": c.issued_at,
                 "evidence_keys": sorted(c.evidence_keys), "fingerprint": c.fingerprint}
                for c in cards]
        rules = [{"card_uuid": c.card_uuid, "rule_id": r} for c in cards for r in set(c.rules)]
        suggestions = [{"card_uuid": c.card_uuid, "suggestion_uuid": s}
                       for c in cards for s in set(c.suggestion_uuids)]
        with self.write() as connection:
            connection.execute(self._insert_ignoring_duplicates(issued_card, ["card_uuid"]),
                               rows)
            if rules:
                connection.execute(self._insert_ignoring_duplicates(
                    issued_card_rule, ["card_uuid", "rule_id"]), rules)
            if suggestions:
                connection.execute(self._insert_ignoring_duplicates(
                    issued_suggestion, ["card_uuid", "suggestion_uuid"]), suggestions)
            # Feedback that came before these records (one indexed look-up, usually empty).
            self.reconcile_early_feedback(connection, [c.card_uuid for c in cards],
                                          cards[0].issued_at)

    def known_cards(self, connection: Connection, uuids: Iterable[str]) -> dict[str, KnownCard]:
        # One statement, so one snapshot: under READ COMMITTED two queries could see a card
        # whose suggestions (committed with it) the earlier query did not yet see.
        uuids = sorted(set(uuids))
        if not uuids:
            return {}
        rows = connection.execute(
            sa.select(issued_card.c.card_uuid, issued_card.c.service_id,
                      issued_card.c.selection_behavior, issued_suggestion.c.suggestion_uuid)
            .select_from(issued_card.outerjoin(
                issued_suggestion, issued_suggestion.c.card_uuid == issued_card.c.card_uuid))
            .where(issued_card.c.card_uuid.in_(uuids))).all()
        suggestions: dict[str, set[str]] = {}
        for row in rows:
            found = suggestions.setdefault(row.card_uuid, set())
            if row.suggestion_uuid is not None:
                found.add(row.suggestion_uuid)
        return {row.card_uuid: KnownCard(row.card_uuid, row.service_id, row.selection_behavior,
                                         frozenset(suggestions[row.card_uuid])) for row in rows}

    def recent_overrides(self, patient_pseudonym: str, since: datetime,
                         limit: int = 200) -> list[OverrideRow]:
        """This patient's cards shown since `since` whose latest outcome is an override made
        since then, newest first (one indexed range of the patient's cards)."""
        engine = self.reader
        naive = since.astimezone(UTC).replace(tzinfo=None)
        bound = naive.strftime(_SQLITE_TIME) if self.dialect == "sqlite" else naive
        statement = _RECENT_OUTCOMES_SQL.format(p=_PARAMETER[engine.dialect.paramstyle])
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(statement, (patient_pseudonym, bound, limit))
            rows = cursor.fetchall()
            cursor.close()
        finally:
            connection.close()  # back to the pool
        latest: dict[str, OverrideRow | None] = {}
        for uuid, hook, keys, outcome, outcome_at, system, code, display in rows:
            if uuid in latest:
                continue  # an older outcome of a card already seen
            at = _utc(outcome_at)
            overridden = outcome == "overridden" and at >= since
            latest[uuid] = OverrideRow(uuid, hook, _keys(keys), at, system, code,
                                       display) if overridden else None
        return [row for row in latest.values() if row is not None]

    # -- feedback --------------------------------------------------------------------------
    def insert_feedback(self, connection: Connection, rows: Sequence[dict]) -> int:
        """Insert in key order (so concurrent batches lock rows in the same order and cannot
        deadlock); returns how many were new."""
        # RETURNING, not rowcount: drivers disagree on the rowcount of a skipped insert.
        statement = self._insert_ignoring_duplicates(card_feedback, ["dedup_key"]).returning(
            card_feedback.c.id)
        stored = 0
        for row in sorted(rows, key=lambda r: r["dedup_key"]):
            stored += len(connection.execute(statement, row).all())
        return stored

    def insert_early_feedback(self, connection: Connection, rows: Sequence[dict]) -> int:
        """Reports on cards whose record has not come yet; returns how many were new."""
        statement = self._insert_ignoring_duplicates(early_feedback, ["dedup_key"]).returning(
            early_feedback.c.id)
        return sum(len(connection.execute(statement, row).all())
                   for row in sorted(rows, key=lambda r: r["dedup_key"]))

    def reconcile_early_feedback(self, connection: Connection, card_uuids: Sequence[str] | None,
                                 now: datetime) -> int:
        """Move early reports whose card is now recorded into card_feedback (all of them, or
        those about `card_uuids`); a report that does not fit its card stays, with the reason.
        Returns how many were moved."""
        query = sa.select(early_feedback).join(
            issued_card, issued_card.c.card_uuid == early_feedback.c.card_uuid).where(
            early_feedback.c.problem.is_(None))
        if card_uuids is not None:
            query = query.where(early_feedback.c.card_uuid.in_(sorted(set(card_uuids))))
        waiting = connection.execute(query).mappings().all()
        if not waiting:
            return 0
        cards = self.known_cards(connection, (row["card_uuid"] for row in waiting))
        moved = []
        for row in waiting:
            card = cards[row["card_uuid"]]
            problems = ([f"issued by {card.service_id}"] if card.service_id != row["service_id"]
                        else [message for _where, message in suggestion_misfits(
                            row["outcome"], tuple(row["accepted_suggestions"]), card)])
            if problems:
                connection.execute(sa.update(early_feedback).where(
                    early_feedback.c.id == row["id"]).values(problem="; ".join(problems)[:500]))
                continue
            moved.append(row)
        if moved:
            rows = [{k: v for k, v in row.items() if k not in ("id", "problem")}
                    | {"reconciled_at": now} for row in moved]
            self.insert_feedback(connection, rows)
            connection.execute(sa.delete(early_feedback).where(
                early_feedback.c.id.in_([row["id"] for row in moved])))
        return len(moved)

    def reconcile_all(self, now: datetime) -> int:
        with self.write() as connection:
            return self.reconcile_early_feedback(connection, None, now)

    # -- for tests and operators -----------------------------------------------------------
    def count(self, table: sa.Table) -> int:
        with self.read() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    def dispose(self) -> None:
        self._engine.dispose()
        if self._reader is not None:
            self._reader.dispose()
