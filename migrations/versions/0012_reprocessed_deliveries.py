"""Reprocessed deliveries: ``deliveries.reprocess_of`` links a delivery parsed again by a newer
version (source ``reprocess``) to the refused delivery whose bytes it holds, which stays as it
was; a partial index finds the refused deliveries already reprocessed.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
# Rechained at merge after the audit chain (0010) and claims (0011).
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LINKED = "reprocess_of IS NOT NULL"


def upgrade() -> None:
    # A nullable column without a default: no table rewrite on either database.
    op.add_column("deliveries", sa.Column("reprocess_of", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_deliveries_reprocess_of",
        "deliveries",
        ["reprocess_of"],
        sqlite_where=sa.text(_LINKED),
        postgresql_where=sa.text(_LINKED),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_reprocess_of", table_name="deliveries")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("reprocess_of")
