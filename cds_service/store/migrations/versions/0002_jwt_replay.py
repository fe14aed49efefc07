"""Token ids already used, shared by every host that uses this database (JWT replay cache).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seen_jti",
        sa.Column("iss", sa.String(512), nullable=False),
        sa.Column("jti", sa.String(512), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("iss", "jti", name="pk_seen_jti"),
    )
    op.create_index("ix_seen_jti_expires_at", "seen_jti", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_seen_jti_expires_at", table_name="seen_jti")
    op.drop_table("seen_jti")
