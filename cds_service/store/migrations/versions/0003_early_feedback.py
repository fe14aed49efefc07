"""Feedback that arrived before its card's record, and when such feedback was reconciled.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "early_feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
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
        sa.Column("problem", sa.String(500)),
        sa.PrimaryKeyConstraint("id", name="pk_early_feedback"),
        sa.UniqueConstraint("dedup_key", name="uq_early_feedback_dedup_key"),
    )
    op.create_index("ix_early_feedback_card_uuid", "early_feedback", ["card_uuid"])
    with op.batch_alter_table("card_feedback") as batch:
        batch.add_column(sa.Column("reconciled_at", sa.DateTime()))


def downgrade() -> None:
    with op.batch_alter_table("card_feedback") as batch:
        batch.drop_column("reconciled_at")
    op.drop_index("ix_early_feedback_card_uuid", table_name="early_feedback")
    op.drop_table("early_feedback")
