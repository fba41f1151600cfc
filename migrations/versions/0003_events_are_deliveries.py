"""A stream's events are the deliveries that brought them: the stream_events table goes.

Every event was stored twice, once as the delivery's raw bytes and once as a parsed row. The
delivery that first brought an event (outcome ``applied`` or ``ignored``) now is the event: a
partial unique index keeps identities unique, and a re-fold parses the raw bytes again.

Downgrading rebuilds stream_events from those deliveries with their identities, sources and
scopes, but an empty payload (``{}``): a later copy of such an event would then count as a
conflict rather than a duplicate.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVENTS = "outcome IN ('applied', 'ignored')"


def upgrade() -> None:
    op.create_index(
        "uq_deliveries_event",
        "deliveries",
        ["stream_id", "kind", "event_ts"],
        unique=True,
        sqlite_where=sa.text(_EVENTS),
        postgresql_where=sa.text(_EVENTS),
    )
    op.drop_table("stream_events")


def downgrade() -> None:
    op.create_table(
        "stream_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event_ts", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event", sa.String(length=128), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=True),
        sa.Column("scope_id", sa.String(length=255), nullable=True),
        sa.Column("account_id", sa.String(length=255), nullable=True),
        sa.Column("session_key", sa.String(length=255), nullable=True),
        sa.Column("operator_id", sa.String(length=255), nullable=True),
        sa.Column("server_urls", sa.Text(), nullable=True),
        sa.Column("stop_reason", sa.Integer(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_events")),
        sa.UniqueConstraint(
            "stream_id", "kind", "event_ts", name=op.f("uq_stream_events_stream_id_kind_event_ts")
        ),
    )
    op.execute(
        "INSERT INTO stream_events (stream_id, kind, event_ts, source, event, scope, scope_id,"
        " payload, received_at)"
        " SELECT d.stream_id, d.kind, d.event_ts, d.source, coalesce(d.event, d.kind), s.scope,"
        " s.scope_id, '{}', d.received_at"
        " FROM deliveries AS d LEFT JOIN streams AS s ON s.stream_id = d.stream_id"
        f" WHERE d.{_EVENTS} AND d.kind IS NOT NULL ORDER BY d.id"
    )
    op.drop_index("uq_deliveries_event", table_name="deliveries")
