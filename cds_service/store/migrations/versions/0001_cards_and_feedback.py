"""Cards as shown, their rules and suggestions, and the feedback on them.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issued_card",
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("hook", sa.String(64), nullable=False),
        sa.Column("hook_instance", sa.String(256)),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("selection_behavior", sa.String(16)),
        sa.Column("patient_pseudonym", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("card_uuid", name="pk_issued_card"),
    )
    op.create_index("ix_issued_card_issued_at", "issued_card", ["issued_at"])
    op.create_index("ix_issued_card_service_id", "issued_card", ["service_id"])
    op.create_table(
        "issued_card_rule",
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.String(100), nullable=False),
        sa.ForeignKeyConstraint(["card_uuid"], ["issued_card.card_uuid"],
                                name="fk_issued_card_rule_card_uuid_issued_card"),
        sa.PrimaryKeyConstraint("card_uuid", "rule_id", name="pk_issued_card_rule"),
    )
    op.create_index("ix_issued_card_rule_rule_id", "issued_card_rule", ["rule_id"])
    op.create_table(
        "issued_suggestion",
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("suggestion_uuid", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["card_uuid"], ["issued_card.card_uuid"],
                                name="fk_issued_suggestion_card_uuid_issued_card"),
        sa.PrimaryKeyConstraint("card_uuid", "suggestion_uuid", name="pk_issued_suggestion"),
    )
    op.create_table(
        "card_feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(64), nullable=False),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_at", sa.DateTime(), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON(), nullable=False),
        sa.Column("reason_system", sa.String(500)),
        sa.Column("reason_code", sa.String(200)),
        sa.Column("reason_display", sa.String(500)),
        sa.Column("user_comment", sa.Text()),
        sa.Column("client_iss", sa.String(500)),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["card_uuid"], ["issued_card.card_uuid"],
                                name="fk_card_feedback_card_uuid_issued_card"),
        sa.PrimaryKeyConstraint("id", name="pk_card_feedback"),
        sa.UniqueConstraint("dedup_key", name="uq_card_feedback_dedup_key"),
    )
    op.create_index("ix_card_feedback_card_uuid", "card_feedback", ["card_uuid"])


def downgrade() -> None:
    op.drop_table("card_feedback")
    op.drop_table("issued_suggestion")
    op.drop_table("issued_card_rule")
    op.drop_table("issued_card")
