"""PostgreSQL: a function that fails a write whose streams changed since it read them.

An optimistic write compares each stream row's version (``xmin``) with the one it read; when a
row has changed, the statement calls this function, which raises a serialisation failure
(SQLSTATE 40001): the writer retries the batch, as it does for any transaction that lost a
race. SQLite needs nothing: its writers are serialised.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 07:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """CREATE FUNCTION rtms_lifecycle_lost_race() RETURNS integer LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION USING ERRCODE = 'serialization_failure',
                    MESSAGE = 'a stream changed since this write read it';
            END $$"""
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION rtms_lifecycle_lost_race()")
