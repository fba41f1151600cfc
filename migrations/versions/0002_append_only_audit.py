"""The database itself refuses to update or delete the audit history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 04:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# No code path, ours or a user's, can rewrite what happened.
_SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER transitions_append_only_{verb.lower()} BEFORE {verb} ON transitions
    BEGIN SELECT RAISE(ABORT, 'transitions is append-only'); END"""
    for verb in ("UPDATE", "DELETE")
]
_POSTGRES_TRIGGERS = [
    """CREATE FUNCTION transitions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'transitions is append-only'; END $$""",
    """CREATE TRIGGER transitions_append_only BEFORE UPDATE OR DELETE ON transitions
    FOR EACH STATEMENT EXECUTE FUNCTION transitions_append_only()""",
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    statements = {"sqlite": _SQLITE_TRIGGERS, "postgresql": _POSTGRES_TRIGGERS}.get(dialect, [])
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS transitions_append_only ON transitions")
        op.execute("DROP FUNCTION IF EXISTS transitions_append_only()")
    else:
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS transitions_append_only_{verb}")
