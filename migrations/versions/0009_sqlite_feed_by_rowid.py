"""SQLite reads the durable feed in rowid order, without an index on ``(tx_id, id)``.

On PostgreSQL the feed is ordered by ``(tx_id, id)``: ids are not in commit order there, and
the writer's transaction id is what makes the order final. On SQLite the writers take turns, so
ids are in commit order and ``tx_id`` is always 0: the index was the table's own rowid order
again, and a delivery committed on its own wrote one of its pages (about one page in ten of
such a commit, measured on the write-ahead log). PostgreSQL keeps it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_transitions_tx_id_id", table_name="transitions")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.create_index("ix_transitions_tx_id_id", "transitions", ["tx_id", "id"])
