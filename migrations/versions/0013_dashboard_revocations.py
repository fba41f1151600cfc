"""Dashboard sign-outs shared by every receiver process: ``dashboard_revocations`` holds each
signed-out session id until the session would have expired anyway.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dashboard_revocations",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name="pk_dashboard_revocations"),
    )
    op.create_index("ix_dashboard_revocations_expires_at", "dashboard_revocations", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_revocations_expires_at", table_name="dashboard_revocations")
    op.drop_table("dashboard_revocations")
