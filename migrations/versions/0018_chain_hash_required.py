"""A transition is refused without its chain hash: a process older than the audit chain cannot
write history that ``audit verify`` would then call broken for good.

Versions before 0011 write transitions without ``chain_hash``. During a rolling upgrade their
receivers kept answering 200 after ``db upgrade``, and every row they wrote broke its stream's
chain. Now such a write fails (the old receiver answers an error, and Zoom retries the delivery
later, when a new receiver takes it). Rows already stored are not checked.

- SQLite: the insert guard of ``transitions`` also refuses a row whose ``chain_hash`` is NULL.
- PostgreSQL: a row trigger whose ``WHEN (NEW.chain_hash IS NULL)`` is checked without calling
  its function, so a row with a hash costs no PL/pgSQL call. (A ``NOT VALID`` check constraint
  would do the same, but SQLAlchemy's reflection of one fails.)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NO_HASH: Final = (
    "transitions: a row without its chain hash is refused: it comes from a version of"
    " rtms-lifecycle older than this database (0.2 or before); upgrade that process"
)
_EXISTS: Final = "transitions is append-only: a row with this id exists"
_SQLITE_UP: Final = (
    "DROP TRIGGER transitions_append_only_insert",
    f"""CREATE TRIGGER transitions_append_only_insert BEFORE INSERT ON transitions
    WHEN NEW.chain_hash IS NULL OR EXISTS (SELECT 1 FROM transitions WHERE id = NEW.id)
    BEGIN SELECT RAISE(ABORT, '{_NO_HASH}') WHERE NEW.chain_hash IS NULL;
    SELECT RAISE(ABORT, '{_EXISTS}'); END""",
)
_SQLITE_DOWN: Final = (
    "DROP TRIGGER transitions_append_only_insert",
    f"""CREATE TRIGGER transitions_append_only_insert BEFORE INSERT ON transitions
    WHEN EXISTS (SELECT 1 FROM transitions WHERE id = NEW.id)
    BEGIN SELECT RAISE(ABORT, '{_EXISTS}'); END""",
)
_PG_UP: Final = (
    f"""CREATE FUNCTION transitions_chain_hash_required() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION '{_NO_HASH}'; END $$""",
    """CREATE TRIGGER transitions_chain_hash_required BEFORE INSERT ON transitions
    FOR EACH ROW WHEN (NEW.chain_hash IS NULL)
    EXECUTE FUNCTION transitions_chain_hash_required()""",
)
_PG_DOWN: Final = (
    "DROP TRIGGER transitions_chain_hash_required ON transitions",
    "DROP FUNCTION transitions_chain_hash_required()",
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_UP if postgres else _SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _PG_DOWN if postgres else _SQLITE_DOWN:
        op.execute(statement)
