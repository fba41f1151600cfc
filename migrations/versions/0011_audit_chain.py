"""The audit history is a hash chain, and a replace or an upsert cannot rewrite it.

- ``transitions.chain_hash``: SHA-256 over the row and its stream's previous row's hash
  (``rtms_lifecycle.store.chain``); ``streams.chain_head``: the hash of the stream's last row.
  Existing rows get theirs here, stream by stream, in id order.
- ``pruned_chains``: append-only, one row per chain a prune removed, with its head: the global
  digest (``rtms-lifecycle audit head``) still verifies after a prune.
- SQLite: an INSERT over an existing id is refused (an ``INSERT OR REPLACE`` deletes the old
  row without firing the delete trigger).
- PostgreSQL: a prune's deletes run in ``rtms_lifecycle_prune_streams``, a SECURITY DEFINER
  function only the owner may execute; the setting ``rtms_lifecycle.pruning`` lets a delete of
  history (transitions, claim history) through only for the owner (that function), no longer for
  any role that sets it. The claim history refuses an INSERT over an existing id on SQLite too.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import sqlalchemy as sa
from alembic import op

from rtms_lifecycle.store.chain import HASHED_COLUMNS, chain_hash

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Streams per step of the backfill: a step reads their transitions, then writes their hashes.
_STREAMS_PER_STEP: Final = 1000
_REFUSED = "transitions is append-only: only a prune removes the history of a stream it removed"

_SQLITE_UP = [
    """CREATE TRIGGER transitions_append_only_insert BEFORE INSERT ON transitions
    WHEN EXISTS (SELECT 1 FROM transitions WHERE id = NEW.id)
    BEGIN SELECT RAISE(ABORT, 'transitions is append-only: a row with this id exists'); END""",
    """CREATE TRIGGER claim_history_append_only_insert BEFORE INSERT ON claim_history
    WHEN EXISTS (SELECT 1 FROM claim_history WHERE id = NEW.id)
    BEGIN SELECT RAISE(ABORT, 'claim_history is append-only: a row with this id exists'); END""",
    *(
        f"""CREATE TRIGGER pruned_chains_append_only_{verb.lower()} BEFORE {verb}
        ON pruned_chains BEGIN SELECT RAISE(ABORT, 'pruned_chains is append-only'); END"""
        for verb in ("UPDATE", "DELETE")
    ),
]
_SQLITE_DOWN = [
    "DROP TRIGGER claim_history_append_only_insert",
    "DROP TRIGGER transitions_append_only_insert",
]

_PG_PRUNED_ONLY = """CREATE OR REPLACE FUNCTION transitions_pruned_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF current_setting('rtms_lifecycle.pruning', true) IS DISTINCT FROM 'on'
            {owner}OR EXISTS (SELECT 1 FROM gone JOIN streams USING (stream_id)) THEN
            RAISE EXCEPTION '{refused}';
        END IF;
        RETURN NULL;
    END $$"""
_PG_OWNER = (
    "OR NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID),"
    " 'MEMBER')\n            "
)
# The prune's deletes, as the owner: a role that may insert and read the history (the
# receiver's) may not execute it, and cannot delete history itself.
_PG_PRUNE_FUNCTION = """CREATE FUNCTION rtms_lifecycle_prune_streams(
        p_ids text[], p_run text, p_at bigint) RETURNS bigint[]
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE n_streams bigint; n_transitions bigint; n_events bigint; n_others bigint;
    BEGIN
        INSERT INTO pruned_chains
            (run, pruned_at, stream_id, transitions, first_id, last_id, last_tx_id, head)
        SELECT p_run, p_at, l.stream_id, n.c, n.f, l.id, l.tx_id, l.chain_hash
        FROM (SELECT DISTINCT ON (stream_id) stream_id, id, tx_id, chain_hash FROM transitions
              WHERE stream_id = ANY(p_ids) ORDER BY stream_id, id DESC) AS l
        JOIN (SELECT stream_id, count(*) AS c, min(id) AS f FROM transitions
              WHERE stream_id = ANY(p_ids) GROUP BY stream_id) AS n USING (stream_id);
        PERFORM set_config('rtms_lifecycle.pruning', 'on', true);
        DELETE FROM streams WHERE stream_id = ANY(p_ids);
        GET DIAGNOSTICS n_streams = ROW_COUNT;
        DELETE FROM transitions WHERE stream_id = ANY(p_ids);
        GET DIAGNOSTICS n_transitions = ROW_COUNT;
        DELETE FROM claim_history WHERE stream_id = ANY(p_ids);
        DELETE FROM stream_claims WHERE stream_id = ANY(p_ids);
        DELETE FROM deliveries WHERE stream_id = ANY(p_ids) AND outcome IN ('applied', 'ignored');
        GET DIAGNOSTICS n_events = ROW_COUNT;
        DELETE FROM deliveries
            WHERE stream_id = ANY(p_ids) AND outcome NOT IN ('applied', 'ignored');
        GET DIAGNOSTICS n_others = ROW_COUNT;
        PERFORM set_config('rtms_lifecycle.pruning', 'off', true);
        RETURN ARRAY[n_streams, n_events + n_others, n_transitions];
    END $$"""
_CLAIMS_REFUSED = (
    "claim_history is append-only: only a prune removes the history of a stream it removed"
)


def _pruned_only(table: str, owner: str, refused: str) -> str:
    return _PG_PRUNED_ONLY.format(owner=owner, refused=refused).replace(
        "transitions_pruned_only", f"{table}_pruned_only"
    )


_PG_UP = [
    _PG_PRUNED_ONLY.format(owner=_PG_OWNER, refused=_REFUSED),
    _pruned_only("claim_history", _PG_OWNER, _CLAIMS_REFUSED),
    _PG_PRUNE_FUNCTION,
    "REVOKE ALL ON FUNCTION rtms_lifecycle_prune_streams(text[], text, bigint) FROM PUBLIC",
    """CREATE FUNCTION pruned_chains_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'pruned_chains is append-only'; END $$""",
    """CREATE TRIGGER pruned_chains_append_only BEFORE UPDATE OR DELETE OR TRUNCATE
    ON pruned_chains FOR EACH STATEMENT EXECUTE FUNCTION pruned_chains_append_only()""",
]
_PG_DOWN = [
    "DROP FUNCTION rtms_lifecycle_prune_streams(text[], text, bigint)",
    _PG_PRUNED_ONLY.format(owner="", refused=_REFUSED),
    _pruned_only("claim_history", "", _CLAIMS_REFUSED),
]


def _backfill(conn: Any) -> None:
    """Every stored transition's hash and every stream's head, a few streams at a time."""
    columns = ", ".join(HASHED_COLUMNS)
    after: str | None = None
    while True:
        ids = [
            row[0]
            for row in conn.execute(
                sa.text(
                    "SELECT DISTINCT stream_id FROM transitions"
                    f"{'' if after is None else ' WHERE stream_id > :after'}"
                    " ORDER BY stream_id LIMIT :n"
                ),
                {"after": after, "n": _STREAMS_PER_STEP},
            )
        ]
        if not ids:
            return
        after = ids[-1]
        rows = conn.execute(
            sa.text(
                f"SELECT {columns} FROM transitions"
                " WHERE stream_id >= :first AND stream_id <= :last ORDER BY stream_id, id"
            ),
            {"first": ids[0], "last": ids[-1]},
        ).all()
        hashes, heads = [], {}
        for row in rows:
            head = chain_hash(heads.get(row[1]), row)
            heads[row[1]] = head
            hashes.append({"h": head, "i": row[0]})
        conn.execute(sa.text("UPDATE transitions SET chain_hash = :h WHERE id = :i"), hashes)
        conn.execute(
            sa.text("UPDATE streams SET chain_head = :h WHERE stream_id = :s"),
            [{"h": head, "s": sid} for sid, head in heads.items()],
        )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.add_column("transitions", sa.Column("chain_hash", sa.String(length=64), nullable=True))
    op.add_column("streams", sa.Column("chain_head", sa.String(length=64), nullable=True))
    op.create_table(
        "pruned_chains",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("run", sa.String(length=32), nullable=False),
        sa.Column("pruned_at", sa.BigInteger(), nullable=False),
        sa.Column("stream_id", sa.String(length=255), nullable=False),
        sa.Column("transitions", sa.Integer(), nullable=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_tx_id", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pruned_chains")),
    )
    # The history refuses updates: its guard steps aside while the hashes are written.
    if dialect == "postgresql":
        op.execute("ALTER TABLE transitions DISABLE TRIGGER transitions_append_only")
    else:
        op.execute("DROP TRIGGER transitions_append_only_update")
    _backfill(op.get_bind())
    if dialect == "postgresql":
        op.execute("ALTER TABLE transitions ENABLE TRIGGER transitions_append_only")
    else:
        op.execute(
            """CREATE TRIGGER transitions_append_only_update BEFORE UPDATE ON transitions
    BEGIN SELECT RAISE(ABORT, 'transitions is append-only'); END"""
        )
    for statement in {"sqlite": _SQLITE_UP, "postgresql": _PG_UP}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_DOWN, "postgresql": _PG_DOWN}.get(dialect, []):
        op.execute(statement)
    op.drop_table("pruned_chains")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION pruned_chains_append_only()")
    op.drop_column("streams", "chain_head")
    # The history's guard refuses updates, and SQLite rebuilds nothing to drop a column.
    op.drop_column("transitions", "chain_hash")
