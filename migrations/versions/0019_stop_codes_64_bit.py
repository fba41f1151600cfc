"""Stop codes are 64-bit: ``streams.stop_reason`` and ``stop_reason_rollup.stop_reason`` become
``BIGINT`` on PostgreSQL, so a code Zoom's enum does not list is stored whatever its size
(docs/decisions/0148-stop-codes-64-bit.md).

- PostgreSQL: ``ALTER COLUMN ... TYPE bigint`` rewrites both tables and their indexes under an
  exclusive lock (100,000 streams: docs/operations.md, "Upgrading"). PostgreSQL refuses it while
  a trigger's ``WHEN`` or ``UPDATE OF`` names the column (the rollup's), so those triggers are
  dropped and created again as they were, in the same transaction. No PL/pgSQL variable or
  parameter holds a code as ``integer``: the trigger functions and the claim functions read it
  through the ``streams`` row type, which follows the column.
- SQLite: nothing to do. An ``INTEGER`` column already holds 64 bits, and its declared type is
  kept (a new type name would mean rebuilding ``streams`` for the same affinity).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS: Final = (("streams", "stop_reason"), ("stop_reason_rollup", "stop_reason"))


# The user triggers whose definition names a column: (table, name, CREATE statement).
_TRIGGERS_ON: Final = sa.text(
    "SELECT DISTINCT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger AS t"
    " JOIN pg_class AS c ON c.oid = t.tgrelid"
    " JOIN pg_depend AS d ON d.classid = 'pg_trigger'::regclass AND d.objid = t.oid"
    " JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
    " WHERE NOT t.tgisinternal AND d.refobjid = CAST(:table AS regclass)"
    " AND a.attname = :column ORDER BY t.tgname"
)


def _retype(sql_type: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    bind = op.get_bind()
    triggers = [
        row
        for table, column in _COLUMNS
        for row in bind.execute(_TRIGGERS_ON, {"table": table, "column": column}).all()
    ]
    for table, name, _ in triggers:
        op.execute(f"DROP TRIGGER {name} ON {table}")
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type}")
    for _, _, create in triggers:
        op.execute(create)


def upgrade() -> None:
    _retype("bigint")


# A code beyond 32 bits has no place in the older column: the downgrade is refused, naming a
# stream that holds one, rather than store another code (the rollup holds no code streams lack).
_WIDE_CODE: Final = """DO $$
DECLARE held record;
BEGIN
    SELECT stream_id, stop_reason INTO held FROM streams
    WHERE stop_reason NOT BETWEEN -2147483648 AND 2147483647 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'streams.stop_reason: stream % holds stop code %, beyond the 32 bits'
            ' (-2147483648..2147483647) revision 0018 stores: nothing downgraded',
            held.stream_id, held.stop_reason;
    END IF;
END $$"""


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_WIDE_CODE)
    _retype("integer")
