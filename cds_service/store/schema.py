"""The tables: cards as shown (with their rules and suggestions) and the feedback on them.

No names, no clinical values: the patient is a keyed hash and a card is known by its uuid,
service, indicator and the ids of the rules that made it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no zones), always read back as an aware UTC datetime."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: times are UTC-aware everywhere")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

issued_card = sa.Table(
    "issued_card", metadata,
    sa.Column("card_uuid", sa.String(64), primary_key=True),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("hook", sa.String(64), nullable=False),
    sa.Column("hook_instance", sa.String(256)),
    sa.Column("indicator", sa.String(16), nullable=False),
    sa.Column("selection_behavior", sa.String(16)),
    sa.Column("patient_pseudonym", sa.String(64), nullable=False),
    sa.Column("issued_at", UTCDateTime(), nullable=False),
    # What the card was about (clinical/repeat_keys.py) as keyed hashes, and their digest: an
    # override of it quiets later cards about nothing more (feedback/quieting.py).
    sa.Column("evidence_keys", sa.JSON()),
    sa.Column("fingerprint", sa.String(32)),
    sa.Index("ix_issued_card_issued_at", "issued_at"),
    sa.Index("ix_issued_card_service_id", "service_id"),
    sa.Index("ix_issued_card_patient", "patient_pseudonym", "issued_at"),
)

issued_card_rule = sa.Table(
    "issued_card_rule", metadata,
    sa.Column("card_uuid", sa.String(64), sa.ForeignKey("issued_card.card_uuid"),
              primary_key=True),
    sa.Column("rule_id", sa.String(100), primary_key=True),
    sa.Index("ix_issued_card_rule_rule_id", "rule_id"),
)

issued_suggestion = sa.Table(
    "issued_suggestion", metadata,
    sa.Column("card_uuid", sa.String(64), sa.ForeignKey("issued_card.card_uuid"),
              primary_key=True),
    sa.Column("suggestion_uuid", sa.String(64), primary_key=True),
)

card_feedback = sa.Table(
    "card_feedback", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    # A hash of (card, outcome, timestamp, override reason): a report sent twice is stored once.
    # A hash and not a unique index over the columns, because NULL reasons are never equal there.
    sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
    sa.Column("card_uuid", sa.String(64), sa.ForeignKey("issued_card.card_uuid"),
              nullable=False),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_at", UTCDateTime(), nullable=False),
    sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
    sa.Column("reason_system", sa.String(500)),
    sa.Column("reason_code", sa.String(200)),
    sa.Column("reason_display", sa.String(500)),
    sa.Column("user_comment", sa.Text()),
    sa.Column("client_iss", sa.String(500)),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    # Set when the report arrived before the card's record and was moved here once it came.
    sa.Column("reconciled_at", UTCDateTime()),
    sa.Index("ix_card_feedback_card_uuid", "card_uuid"),
)

# Feedback on a card whose uuid proves this service issued it (card_ids.py) but whose record
# had not reached the store: kept here until it does (reconciled into card_feedback). `problem`
# says why a row could not be moved when its record came (e.g. a suggestion not on the card).
early_feedback = sa.Table(
    "early_feedback", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
    sa.Column("card_uuid", sa.String(64), nullable=False),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_at", UTCDateTime(), nullable=False),
    sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
    sa.Column("reason_system", sa.String(500)),
    sa.Column("reason_code", sa.String(200)),
    sa.Column("reason_display", sa.String(500)),
    sa.Column("user_comment", sa.Text()),
    sa.Column("client_iss", sa.String(500)),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("problem", sa.String(500)),
    sa.Index("ix_early_feedback_card_uuid", "card_uuid"),
)

# A card not shown because the clinician had overridden one about the same things: counted
# per rule in the report (the repeats spared). No patient: the count is what a committee needs.
quieted_card = sa.Table(
    "quieted_card", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("service_id", sa.String(100), nullable=False),
    sa.Column("indicator", sa.String(16), nullable=False),
    sa.Column("fingerprint", sa.String(32), nullable=False),
    sa.Column("acknowledged_card_uuid", sa.String(64), nullable=False),
    sa.Column("rules", sa.JSON(), nullable=False),
    sa.Column("quieted_at", UTCDateTime(), nullable=False),
    sa.Index("ix_quieted_card_quieted_at", "quieted_at"),
)

# The JWT replay cache shared by several hosts (see cds_service/shared_replay.py).
seen_jti = sa.Table(
    "seen_jti", metadata,
    sa.Column("iss", sa.String(512), primary_key=True),
    sa.Column("jti", sa.String(512), primary_key=True),
    sa.Column("expires_at", sa.Float(), nullable=False, index=True),
)
