"""A claim queue: the free live streams in start order, so that a claim does not read the held.

- ``claim_queue``: one row per live stream (started, resumed, interrupted) that has no claim
  not ended, indexed by (started_at, stream_id); filled here from the streams and claims.
- Triggers on ``streams`` keep it in the transaction that records a start or a stop: a stream
  that becomes live is added unless a claim holds it, one that stops is removed, a changed
  ``started_at`` moves it. Claims remove their stream's row, releases add it back
  (``store/claims.py``).
- ``ix_stream_claims_expires_at``: the claims not ended by expiry, where a claim finds a held
  stream whose lease ran out.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOT_LIVE = "('new', 'stopped')"
_UNHELD = (
    "NOT EXISTS (SELECT 1 FROM stream_claims AS c"
    " WHERE c.stream_id = NEW.stream_id AND c.ended_at IS NULL)"
)
# Queue the stream if nobody holds it (a changed start moves it); no-op for a held stream.
_ENQUEUE = (
    "INSERT INTO claim_queue (stream_id, started_at) SELECT NEW.stream_id, NEW.started_at"
    f" WHERE NEW.state NOT IN {_NOT_LIVE} AND {_UNHELD}"
    " ON CONFLICT (stream_id) DO UPDATE SET started_at = excluded.started_at;"
)
_DEQUEUE = f"DELETE FROM claim_queue WHERE stream_id = NEW.stream_id AND NEW.state IN {_NOT_LIVE};"
_UPDATE_WHEN = (
    f"(NEW.state IN {_NOT_LIVE}) IS NOT (OLD.state IN {_NOT_LIVE})"
    " OR NEW.started_at IS NOT OLD.started_at"
)

_SQLITE_UP = [
    f"""CREATE TRIGGER streams_claim_queue_insert AFTER INSERT ON streams
    WHEN NEW.state NOT IN {_NOT_LIVE}
    BEGIN {_ENQUEUE} END""",
    f"""CREATE TRIGGER streams_claim_queue_update AFTER UPDATE OF state, started_at ON streams
    WHEN {_UPDATE_WHEN}
    BEGIN {_DEQUEUE} {_ENQUEUE} END""",
]
_SQLITE_DOWN = [
    "DROP TRIGGER streams_claim_queue_update",
    "DROP TRIGGER streams_claim_queue_insert",
]

_POSTGRES_UP = [
    f"""CREATE FUNCTION streams_claim_queue() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN {_DEQUEUE} {_ENQUEUE} RETURN NULL; END $$""",
    f"""CREATE TRIGGER streams_claim_queue_insert AFTER INSERT ON streams FOR EACH ROW
    WHEN (NEW.state NOT IN {_NOT_LIVE}) EXECUTE FUNCTION streams_claim_queue()""",
    f"""CREATE TRIGGER streams_claim_queue_update AFTER UPDATE OF state, started_at ON streams
    FOR EACH ROW WHEN ({_UPDATE_WHEN.replace(" IS NOT ", " IS DISTINCT FROM ")})
    EXECUTE FUNCTION streams_claim_queue()""",
]
_POSTGRES_DOWN = [
    "DROP TRIGGER streams_claim_queue_update ON streams",
    "DROP TRIGGER streams_claim_queue_insert ON streams",
    "DROP FUNCTION streams_claim_queue()",
]

_FILL = (
    "INSERT INTO claim_queue (stream_id, started_at) SELECT s.stream_id, s.started_at"
    f" FROM streams AS s WHERE s.state NOT IN {_NOT_LIVE} AND NOT EXISTS (SELECT 1"
    " FROM stream_claims AS c WHERE c.stream_id = s.stream_id AND c.ended_at IS NULL)"
)


def upgrade() -> None:
    op.create_table(
        "claim_queue",
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_claim_queue")),
    )
    op.create_index(
        "ix_claim_queue_started_at_stream_id", "claim_queue", ["started_at", "stream_id"]
    )
    op.create_index(
        "ix_stream_claims_expires_at",
        "stream_claims",
        ["expires_at"],
        sqlite_where=sa.text("ended_at IS NULL"),
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_UP, "postgresql": _POSTGRES_UP}.get(dialect, []):
        op.execute(statement)
    op.execute(_FILL)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_DOWN, "postgresql": _POSTGRES_DOWN}.get(dialect, []):
        op.execute(statement)
    op.drop_index("ix_stream_claims_expires_at", table_name="stream_claims")
    op.drop_index("ix_claim_queue_started_at_stream_id", table_name="claim_queue")
    op.drop_table("claim_queue")
