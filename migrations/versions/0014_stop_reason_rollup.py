"""Stop rollup: ``stop_reason_rollup`` counts the stops of ``streams`` per UTC day, scope, stop
reason and bucket of duration, and ``ix_streams_stop_duration`` finds a group's durations in
order; both serve ``stop_reason_stats``.

Triggers on ``streams`` keep the rollup in the transaction that inserts, changes or deletes a
stop, whichever code path does it (writers, batches, reprocess, an earlier stop replacing a
later one, prune): it always counts what ``streams`` holds. The upgrade fills it from the stored
rows. The expressions below must stay those of ``rtms_lifecycle.store.rollup`` (a test compares).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DAY_MS = 86_400_000
_MINUTE = 60_000
_BOUNDS = (
    0,
    1_000,
    10_000,
    30_000,
    *(m * _MINUTE for m in (1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 105, 120, 150)),
    *(h * 60 * _MINUTE for h in (3, 4, 6, 8, 12, 24, 48)),
    7 * 24 * 60 * _MINUTE,
)
_ZOOM_SOURCES = "'reprocess', 'webhook'"


def _day(row: str) -> str:
    at = f"{row}.stopped_at"
    return f"(CASE WHEN {at} >= 0 THEN {at} / {_DAY_MS} ELSE ({at} + 1) / {_DAY_MS} - 1 END)"


def _bucket(row: str) -> str:
    took = f"({row}.stopped_at - {row}.started_at)"

    def search(low: int, high: int) -> str:
        if low == high:
            return str(low)
        middle = (low + high + 1) // 2
        return (
            f"CASE WHEN {took} < {_BOUNDS[middle]} THEN {search(low, middle - 1)}"
            f" ELSE {search(middle, high)} END"
        )

    return (
        f"(CASE WHEN {row}.started_at IS NULL THEN -2 WHEN {took} < 0 THEN -1"
        f" ELSE {search(0, len(_BOUNDS) - 1)} END)"
    )


def _kind(row: str) -> str:
    return (
        f"(CASE WHEN {row}.stop_reason IS NOT NULL THEN 0"
        f" WHEN {row}.stop_source IN ({_ZOOM_SOURCES}) THEN 1 ELSE 2 END)"
    )


def _key(row: str) -> str:
    return (
        f"{_day(row)}, coalesce({row}.scope, ''), {_kind(row)},"
        f" coalesce({row}.stop_reason, 0), {_bucket(row)}"
    )


_COLUMNS = "day, scope, kind, stop_reason, bucket"


def _add(row: str, guard: str) -> str:
    return (
        f"INSERT INTO stop_reason_rollup ({_COLUMNS}, count) SELECT {_key(row)}, 1 WHERE {guard}"
        f" ON CONFLICT ({_COLUMNS}) DO UPDATE SET count = stop_reason_rollup.count + 1;"
    )


def _remove(row: str, guard: str) -> str:
    match = f"({_COLUMNS}) = ({_key(row)})"
    return (
        f"UPDATE stop_reason_rollup SET count = count - 1 WHERE {guard} AND {match};"
        f" DELETE FROM stop_reason_rollup WHERE {guard} AND {match} AND count <= 0;"
    )


# Only a change of what the key is made of moves a count.
_CHANGED = " OR ".join(
    f"OLD.{c} IS NOT NEW.{c}"
    for c in ("stopped_at", "started_at", "stop_reason", "scope", "stop_source")
)
_CHANGED = f"(OLD.stopped_at IS NOT NULL OR NEW.stopped_at IS NOT NULL) AND ({_CHANGED})"
_WATCHED = "stopped_at, started_at, stop_reason, scope, stop_source"

_SQLITE_UP = [
    f"""CREATE TRIGGER streams_rollup_insert AFTER INSERT ON streams
    WHEN NEW.stopped_at IS NOT NULL
    BEGIN {_add("NEW", "1")} END""",
    f"""CREATE TRIGGER streams_rollup_update AFTER UPDATE OF {_WATCHED} ON streams
    WHEN {_CHANGED}
    BEGIN {_remove("OLD", "OLD.stopped_at IS NOT NULL")}
    {_add("NEW", "NEW.stopped_at IS NOT NULL")} END""",
    f"""CREATE TRIGGER streams_rollup_delete AFTER DELETE ON streams
    WHEN OLD.stopped_at IS NOT NULL
    BEGIN {_remove("OLD", "1")} END""",
]
_SQLITE_DOWN = [
    "DROP TRIGGER streams_rollup_delete",
    "DROP TRIGGER streams_rollup_update",
    "DROP TRIGGER streams_rollup_insert",
]

_PG_CHANGED = _CHANGED.replace(" IS NOT ", " IS DISTINCT FROM ")
_POSTGRES_UP = [
    f"""CREATE FUNCTION streams_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            IF OLD.stopped_at IS NOT NULL THEN {_remove("OLD", "true")} END IF;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            IF NEW.stopped_at IS NOT NULL THEN {_add("NEW", "true")} END IF;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER streams_rollup_insert AFTER INSERT ON streams FOR EACH ROW
    WHEN (NEW.stopped_at IS NOT NULL) EXECUTE FUNCTION streams_rollup()""",
    f"""CREATE TRIGGER streams_rollup_update AFTER UPDATE OF {_WATCHED} ON streams
    FOR EACH ROW WHEN ({_PG_CHANGED}) EXECUTE FUNCTION streams_rollup()""",
    """CREATE TRIGGER streams_rollup_delete AFTER DELETE ON streams FOR EACH ROW
    WHEN (OLD.stopped_at IS NOT NULL) EXECUTE FUNCTION streams_rollup()""",
]
_POSTGRES_DOWN = [
    "DROP TRIGGER streams_rollup_delete ON streams",
    "DROP TRIGGER streams_rollup_update ON streams",
    "DROP TRIGGER streams_rollup_insert ON streams",
    "DROP FUNCTION streams_rollup()",
]

_FILL = (
    f"INSERT INTO stop_reason_rollup ({_COLUMNS}, count) SELECT {_key('s')}, count(*)"
    f" FROM streams AS s WHERE s.stopped_at IS NOT NULL GROUP BY {_key('s')}"
)
_STOPPED = "stopped_at IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "stop_reason_rollup",
        sa.Column("day", sa.BigInteger(), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("stop_reason", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.SmallInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "scope", "kind", "stop_reason", "bucket", name=op.f("pk_stop_reason_rollup")
        ),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_streams_stop_duration",
        "streams",
        [
            sa.text("stop_reason"),
            sa.text("(stopped_at - started_at)"),
            sa.text("scope"),
            sa.text("stopped_at"),
            sa.text("stop_source"),
        ],
        sqlite_where=sa.text(_STOPPED),
        postgresql_where=sa.text(_STOPPED),
    )
    op.execute(_FILL)
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_UP, "postgresql": _POSTGRES_UP}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_DOWN, "postgresql": _POSTGRES_DOWN}.get(dialect, []):
        op.execute(statement)
    op.drop_index("ix_streams_stop_duration", table_name="streams")
    op.drop_table("stop_reason_rollup")
