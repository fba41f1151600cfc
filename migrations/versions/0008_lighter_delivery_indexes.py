"""Two delivery indexes that most deliveries no longer write.

Every delivery wrote four index entries (its id, its outcome, its stream, its event identity),
two of them at a random place in a large index, and index maintenance was most of what a bulk
load cost. Most deliveries are applied events, which the event-identity index already lists by
stream, so:

- ``ix_deliveries_stream_other`` lists a stream's deliveries that are not events (duplicates,
  conflicts, rejections, ...); a stream's deliveries are those rows and its events
  (``uq_deliveries_event``). It replaces ``ix_deliveries_stream_id_id``.
- ``ix_deliveries_unapplied`` lists deliveries by outcome for every outcome but ``applied``
  (what an operator looks for: rejected, unhandled, conflicts); the newest applied deliveries are
  the newest rows. It replaces ``ix_deliveries_outcome_id``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 06:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelt as the queries spell them: SQLite uses a partial index only for a query that states its
# condition in the same words.
_NOT_EVENT = "outcome NOT IN ('applied', 'ignored')"
_UNAPPLIED = "outcome != 'applied'"


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_stream_other",
        "deliveries",
        ["stream_id", "id"],
        sqlite_where=sa.text(_NOT_EVENT),
        postgresql_where=sa.text(_NOT_EVENT),
    )
    op.create_index(
        "ix_deliveries_unapplied",
        "deliveries",
        ["outcome", "id"],
        sqlite_where=sa.text(_UNAPPLIED),
        postgresql_where=sa.text(_UNAPPLIED),
    )
    op.drop_index("ix_deliveries_stream_id_id", table_name="deliveries")
    op.drop_index("ix_deliveries_outcome_id", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_outcome_id", "deliveries", ["outcome", "id"])
    op.create_index("ix_deliveries_stream_id_id", "deliveries", ["stream_id", "id"])
    op.drop_index("ix_deliveries_unapplied", table_name="deliveries")
    op.drop_index("ix_deliveries_stream_other", table_name="deliveries")
