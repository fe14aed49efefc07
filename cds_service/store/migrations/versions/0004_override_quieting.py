"""Override quieting: what each shown card was about (keyed hashes), and the cards not shown
again because a clinician had overridden the same ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issued_card") as batch:
        batch.add_column(sa.Column("evidence_keys", sa.JSON()))
        batch.add_column(sa.Column("fingerprint", sa.String(32)))
    op.create_index("ix_issued_card_patient", "issued_card", ["patient_pseudonym", "issued_at"])
    op.create_table(
        "quieted_card",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False,
                  autoincrement=True),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("acknowledged_card_uuid", sa.String(64), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("quieted_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quieted_card"),
    )
    op.create_index("ix_quieted_card_quieted_at", "quieted_card", ["quieted_at"])


def downgrade() -> None:
    op.drop_index("ix_quieted_card_quieted_at", table_name="quieted_card")
    op.drop_table("quieted_card")
    op.drop_index("ix_issued_card_patient", table_name="issued_card")
    with op.batch_alter_table("issued_card") as batch:
        batch.drop_column("fingerprint")
        batch.drop_column("evidence_keys")
