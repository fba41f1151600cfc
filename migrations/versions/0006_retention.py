"""Retention: a prune may remove the history of the streams it removes, and records each step.

- ``transitions`` stays append-only for everything else: an UPDATE (and, on PostgreSQL, a
  TRUNCATE) is still refused, and a DELETE passes only inside a prune (PostgreSQL: the
  transaction-local setting ``rtms_lifecycle.pruning = on``; SQLite: the function
  ``rtms_lifecycle_pruning()`` returning 1, which only the pruning connection defines so) and only
  for rows whose stream row is already gone.
- ``prunes``: one append-only row per prune transaction (what it removed, with which cutoff).
- ``deliveries.same_as``: a duplicate byte-identical to a stored event references that event's
  delivery instead of keeping a second copy of the bytes.

Downgrading copies the referenced bytes back into the duplicates first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REFUSED = "transitions is append-only: only a prune removes the history of a stream it removed"

_SQLITE_UP = [
    "DROP TRIGGER transitions_append_only_delete",
    # The function is defined by every connection of the store (0) and by the pruning one (1);
    # another program's connection does not define it, and its DELETE fails to compile.
    f"""CREATE TRIGGER transitions_append_only_delete BEFORE DELETE ON transitions
    WHEN NOT rtms_lifecycle_pruning()
        OR EXISTS (SELECT 1 FROM streams WHERE streams.stream_id = OLD.stream_id)
    BEGIN SELECT RAISE(ABORT, '{_REFUSED}'); END""",
    *(
        f"""CREATE TRIGGER prunes_append_only_{verb.lower()} BEFORE {verb} ON prunes
        BEGIN SELECT RAISE(ABORT, 'prunes is append-only'); END"""
        for verb in ("UPDATE", "DELETE")
    ),
]
_SQLITE_DOWN = [
    "DROP TRIGGER transitions_append_only_delete",
    """CREATE TRIGGER transitions_append_only_delete BEFORE DELETE ON transitions
    BEGIN SELECT RAISE(ABORT, 'transitions is append-only'); END""",
]

_POSTGRES_UP = [
    "DROP TRIGGER transitions_append_only ON transitions",
    """CREATE TRIGGER transitions_append_only BEFORE UPDATE OR TRUNCATE ON transitions
    FOR EACH STATEMENT EXECUTE FUNCTION transitions_append_only()""",
    # One check per statement, over the deleted rows (a transition table), not one per row.
    f"""CREATE FUNCTION transitions_pruned_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('rtms_lifecycle.pruning', true) IS DISTINCT FROM 'on'
            OR EXISTS (SELECT 1 FROM gone JOIN streams USING (stream_id)) THEN
            RAISE EXCEPTION '{_REFUSED}';
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER transitions_pruned_only AFTER DELETE ON transitions
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION transitions_pruned_only()""",
    """CREATE FUNCTION prunes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'prunes is append-only'; END $$""",
    """CREATE TRIGGER prunes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON prunes
    FOR EACH STATEMENT EXECUTE FUNCTION prunes_append_only()""",
]
_POSTGRES_DOWN = [
    "DROP TRIGGER transitions_pruned_only ON transitions",
    "DROP FUNCTION transitions_pruned_only()",
    "DROP TRIGGER transitions_append_only ON transitions",
    """CREATE TRIGGER transitions_append_only BEFORE UPDATE OR DELETE ON transitions
    FOR EACH STATEMENT EXECUTE FUNCTION transitions_append_only()""",
]


def upgrade() -> None:
    op.create_table(
        "prunes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run", sa.String(length=32), nullable=False),
        sa.Column("pruned_at", sa.BigInteger(), nullable=False),
        sa.Column("cutoff", sa.BigInteger(), nullable=False),
        sa.Column("streams", sa.Integer(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("transitions", sa.Integer(), nullable=False),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prunes")),
    )
    op.create_index("ix_prunes_run", "prunes", ["run"], unique=False)
    # A nullable column without a default: no table rewrite on either database.
    op.add_column("deliveries", sa.Column("same_as", sa.BigInteger(), nullable=True))
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_UP, "postgresql": _POSTGRES_UP}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_DOWN, "postgresql": _POSTGRES_DOWN}.get(dialect, []):
        op.execute(statement)
    op.execute(
        "UPDATE deliveries SET raw = coalesce((SELECT first.raw FROM deliveries AS first"
        " WHERE first.id = deliveries.same_as), raw) WHERE same_as IS NOT NULL"
    )
    # SQLite 3.35+ drops a column in place: no rebuild of the (large) table and its indexes.
    op.drop_column("deliveries", "same_as")
    op.drop_index("ix_prunes_run", table_name="prunes")
    op.drop_table("prunes")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION prunes_append_only()")
