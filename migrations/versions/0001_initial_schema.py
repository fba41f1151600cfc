"""Initial schema: streams, stream events, deliveries, the audit history, alerts.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 03:58:01.494972
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "concurrency_alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("event_ts", sa.BigInteger(), nullable=False),
        sa.Column("concurrency_number", sa.Integer(), nullable=False),
        sa.Column("concurrency_limit", sa.Integer(), nullable=True),
        sa.Column("percentage", sa.Integer(), nullable=True),
        sa.Column("operator_id", sa.String(length=255), nullable=True),
        sa.Column("id_field", sa.String(length=32), nullable=True),
        sa.Column("id_value", sa.String(length=255), nullable=True),
        sa.Column("account_id", sa.String(length=255), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_concurrency_alerts")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_concurrency_alerts_fingerprint")),
    )
    with op.batch_alter_table("concurrency_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_concurrency_alerts_event_ts", ["event_ts"], unique=False)

    op.create_table(
        "deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event", sa.Text(), nullable=True),
        sa.Column("event_ts", sa.BigInteger(), nullable=True),
        sa.Column("stream_id", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_outcome_id", ["outcome", "id"], unique=False)
        batch_op.create_index("ix_deliveries_stream_id_id", ["stream_id", "id"], unique=False)

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
    op.create_table(
        "streams",
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=True),
        sa.Column("scope_id", sa.String(length=255), nullable=True),
        sa.Column("account_id", sa.String(length=255), nullable=True),
        sa.Column("session_key", sa.String(length=255), nullable=True),
        sa.Column("operator_id", sa.String(length=255), nullable=True),
        sa.Column("server_urls", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("first_event_at", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("stopped_at", sa.BigInteger(), nullable=True),
        sa.Column("stop_reason", sa.Integer(), nullable=True),
        sa.Column("last_event_at", sa.BigInteger(), nullable=True),
        sa.Column("interruptions", sa.Integer(), nullable=False),
        sa.Column("resumes", sa.Integer(), nullable=False),
        sa.Column("failovers", sa.Integer(), nullable=False),
        sa.Column("fold_ts", sa.BigInteger(), nullable=False),
        sa.Column("fold_rank", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_streams")),
    )
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.create_index(
            "ix_streams_live",
            [
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
            ],
            unique=False,
            sqlite_where=sa.text("state != 'stopped'"),
            postgresql_where=sa.text("state != 'stopped'"),
        )
        batch_op.create_index("ix_streams_scope_scope_id", ["scope", "scope_id"], unique=False)
        batch_op.create_index("ix_streams_first_event_at", ["first_event_at"], unique=False)
        batch_op.create_index(
            "ix_streams_stopped_at",
            ["stopped_at", "stop_reason", "started_at", "scope"],
            unique=False,
            sqlite_where=sa.text("stopped_at IS NOT NULL"),
            postgresql_where=sa.text("stopped_at IS NOT NULL"),
        )

    op.create_table(
        "transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("event_ts", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.Column("tx_id", sa.BigInteger(), nullable=False),
        sa.Column("delivery_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transitions")),
    )
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_transitions_stream_id_event_ts", ["stream_id", "event_ts"], unique=False
        )
        batch_op.create_index("ix_transitions_tx_id_id", ["tx_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_transitions_tx_id_id")
        batch_op.drop_index("ix_transitions_stream_id_event_ts")

    op.drop_table("transitions")
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_streams_stopped_at",
            sqlite_where=sa.text("stopped_at IS NOT NULL"),
            postgresql_where=sa.text("stopped_at IS NOT NULL"),
        )
        batch_op.drop_index("ix_streams_first_event_at")
        batch_op.drop_index("ix_streams_scope_scope_id")
        batch_op.drop_index(
            "ix_streams_live",
            sqlite_where=sa.text("state != 'stopped'"),
            postgresql_where=sa.text("state != 'stopped'"),
        )

    op.drop_table("streams")
    op.drop_table("stream_events")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_stream_id_id")
        batch_op.drop_index("ix_deliveries_outcome_id")

    op.drop_table("deliveries")
    with op.batch_alter_table("concurrency_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_concurrency_alerts_event_ts")

    op.drop_table("concurrency_alerts")
