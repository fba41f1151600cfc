"""Claims: each live stream is held by at most one worker, with a lease and a fencing token.

- ``stream_claims``: one row per stream ever claimed, its newest claim (the token grows with
  each new claim of the stream, so the row is kept when a claim ends).
- ``claim_history``: append-only, as ``transitions`` is (only a prune removes the rows of the
  streams it removed).
- A trigger on ``streams`` ends a stream's claim in the transaction that records its stop.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REFUSED = "claim_history is append-only: only a prune removes the history of a stream it removed"

# What a stop does to the stream's claim: recorded, then ended (an expired lease too).
_STOP_HISTORY = (
    "INSERT INTO claim_history (stream_id, token, worker, event, source, at, recorded_at, reason)"
    " SELECT c.stream_id, c.token, c.worker, 'stopped', coalesce(NEW.stop_source, 'system'),"
    " coalesce(NEW.stopped_at,"
    " NEW.updated_at), NEW.updated_at, {reason} FROM stream_claims AS c"
    " WHERE c.stream_id = NEW.stream_id AND c.ended_at IS NULL;"
    " UPDATE stream_claims SET ended_at = NEW.updated_at, end_reason = 'stopped'"
    " WHERE stream_id = NEW.stream_id AND ended_at IS NULL;"
)

_SQLITE_UP = [
    f"""CREATE TRIGGER claim_history_append_only_update BEFORE UPDATE ON claim_history
    BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END""",
    f"""CREATE TRIGGER claim_history_append_only_delete BEFORE DELETE ON claim_history
    WHEN NOT rtms_lifecycle_pruning()
        OR EXISTS (SELECT 1 FROM streams WHERE streams.stream_id = OLD.stream_id)
    BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END""",
    f"""CREATE TRIGGER streams_stop_ends_claim AFTER UPDATE OF state ON streams
    WHEN NEW.state = 'stopped' AND OLD.state <> 'stopped'
    BEGIN {_STOP_HISTORY.format(reason="CAST(NEW.stop_reason AS TEXT)")} END""",
]
_SQLITE_DOWN = [
    "DROP TRIGGER streams_stop_ends_claim",
    "DROP TRIGGER claim_history_append_only_delete",
    "DROP TRIGGER claim_history_append_only_update",
]

_POSTGRES_UP = [
    f"""CREATE FUNCTION claim_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION '{_REFUSED}'; END $$""",
    """CREATE TRIGGER claim_history_append_only BEFORE UPDATE OR TRUNCATE ON claim_history
    FOR EACH STATEMENT EXECUTE FUNCTION claim_history_append_only()""",
    f"""CREATE FUNCTION claim_history_pruned_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('rtms_lifecycle.pruning', true) IS DISTINCT FROM 'on'
            OR EXISTS (SELECT 1 FROM gone JOIN streams USING (stream_id)) THEN
            RAISE EXCEPTION '{_REFUSED}';
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER claim_history_pruned_only AFTER DELETE ON claim_history
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION claim_history_pruned_only()""",
    f"""CREATE FUNCTION streams_stop_ends_claim() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_STOP_HISTORY.format(reason="NEW.stop_reason::text")} RETURN NULL; END $$""",
    """CREATE TRIGGER streams_stop_ends_claim AFTER UPDATE OF state ON streams FOR EACH ROW
    WHEN (NEW.state = 'stopped' AND OLD.state IS DISTINCT FROM 'stopped')
    EXECUTE FUNCTION streams_stop_ends_claim()""",
]
_POSTGRES_DOWN = [
    "DROP TRIGGER streams_stop_ends_claim ON streams",
    "DROP FUNCTION streams_stop_ends_claim()",
    "DROP TRIGGER claim_history_pruned_only ON claim_history",
    "DROP FUNCTION claim_history_pruned_only()",
    "DROP TRIGGER claim_history_append_only ON claim_history",
    "DROP FUNCTION claim_history_append_only()",
]

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stream_claims",
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("claimed_at", sa.BigInteger(), nullable=False),
        sa.Column("renewed_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("connected_at", sa.BigInteger(), nullable=True),
        sa.Column("disconnected_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_stream_claims")),
    )
    op.create_table(
        "claim_history",
        sa.Column("id", _Id, autoincrement=True, nullable=False),
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_claim_history")),
    )
    op.create_index(
        "ix_claim_history_stream_id_id", "claim_history", ["stream_id", "id"], unique=False
    )
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_UP, "postgresql": _POSTGRES_UP}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_DOWN, "postgresql": _POSTGRES_DOWN}.get(dialect, []):
        op.execute(statement)
    op.drop_index("ix_claim_history_stream_id_id", table_name="claim_history")
    op.drop_table("claim_history")
    op.drop_table("stream_claims")
