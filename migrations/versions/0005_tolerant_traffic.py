"""Who stopped a stream, and which secret signed a delivery when.

- ``streams.stop_source``: the source of the applied stop (``webhook``, or ``system`` for an
  expiry). A ``stopped`` webhook without a stop reason is now applied; its stream, like an
  expired one, has no code, and the source tells ``NOT_PROVIDED`` from ``EXPIRED``. Before this
  revision only an expiry could stop a stream without a reason, so existing rows are filled in
  from ``stop_reason``. The two covering indexes that hold every column a query reads get it too.
- ``deliveries.signed_at`` (epoch ms of the request's ``x-zm-request-timestamp``) and
  ``deliveries.secret_label`` (the label of the configured secret that verified it, never the
  secret): null for deliveries that were not verified by the receiver.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "state != 'stopped'"
_STOPPED = "stopped_at IS NOT NULL"
_LIVE_COLUMNS = [
    "state",
    "scope",
    "scope_id",
    "stream_id",
    "account_id",
    "session_key",
    "operator_id",
    "server_urls",
    "started_at",
    "stopped_at",
    "last_event_at",
    "stop_reason",
    "interruptions",
    "resumes",
    "failovers",
]
_STOPPED_COLUMNS = ["stopped_at", "stop_reason", "started_at", "scope"]


def _indexes(extra: list[str]) -> None:
    op.create_index(
        "ix_streams_live",
        "streams",
        [*_LIVE_COLUMNS, *extra],
        sqlite_where=sa.text(_LIVE),
        postgresql_where=sa.text(_LIVE),
    )
    op.create_index(
        "ix_streams_stopped_at",
        "streams",
        [*_STOPPED_COLUMNS, *extra],
        sqlite_where=sa.text(_STOPPED),
        postgresql_where=sa.text(_STOPPED),
    )


def _drop_indexes() -> None:
    op.drop_index("ix_streams_live", table_name="streams")
    op.drop_index("ix_streams_stopped_at", table_name="streams")


def upgrade() -> None:
    op.add_column("streams", sa.Column("stop_source", sa.String(length=16), nullable=True))
    op.execute(
        "UPDATE streams SET stop_source = CASE WHEN stop_reason IS NULL THEN 'system'"
        f" ELSE 'webhook' END WHERE {_STOPPED}"
    )
    _drop_indexes()
    _indexes(["stop_source"])
    op.add_column("deliveries", sa.Column("signed_at", sa.BigInteger(), nullable=True))
    op.add_column("deliveries", sa.Column("secret_label", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("deliveries", "secret_label")
    op.drop_column("deliveries", "signed_at")
    _drop_indexes()
    _indexes([])
    op.drop_column("streams", "stop_source")
