"""The SQL of retention: a prune's short transactions on a connection of its own, and the
record of prunes. What may be pruned and when is :mod:`rtms_lifecycle.retention`'s to decide.

Only inside a prune's writing transactions does the audit history's guard let transitions go
(migrations 0006, 0011), and only those of streams whose row is already gone; each removed chain
is recorded in ``pruned_chains`` first. On PostgreSQL those deletes run in a function only the
database's owner may execute. On SQLite each transaction is held under :meth:`Store.guarded`:
this process's writes one at a time, the file checked.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from sqlalchemy import and_, case, func, select

from rtms_lifecycle.exceptions import DatabaseError, StoreError
from rtms_lifecycle.records import PruneRecord, PruneResult
from rtms_lifecycle.store.core import Store
from rtms_lifecycle.store.errors import first_line
from rtms_lifecycle.store.predicates import STREAM_DELIVERY_PREDICATES
from rtms_lifecycle.store.revocations import FORGET_EXPIRED
from rtms_lifecycle.store.sqlite import (
    PRUNING,
    PRUNING_FUNCTION,
    SQLITE_BUSY_TIMEOUT_MS,
    SQLITE_WAIT_SLICE_MS,
    execute_when_unlocked,
    lock_wait_s,
    not_pruning,
)
from rtms_lifecycle.store.tables import prunes

__all__ = ["PruneInterrupted", "list_prunes", "prune"]


class PruneInterrupted(KeyboardInterrupt):
    """A Ctrl-C stopped a prune: ``result`` is what its committed steps removed (each recorded
    in ``prunes``), the step under way rolled back; ``complete`` if every step had committed
    (it stopped in the vacuum or the checkpoint after them)."""

    def __init__(self, result: PruneResult, *, complete: bool) -> None:
        super().__init__()
        self.result = result
        self.complete = complete


# Per transaction: short enough that a waiting receiver's write is not held up for long.
_STREAMS_PER_STEP: Final = 200
_DELIVERIES_PER_STEP: Final = 5000
# What each record of a prune counts.
_COUNTED: Final = ("streams", "deliveries", "transitions", "alerts")
# PostgreSQL's SQLSTATE for "permission denied".
_INSUFFICIENT_PRIVILEGE: Final = "42501"

# Stream selection: stopped before the cutoff (stopped_at is set exactly when a stream stopped;
# the IS NOT NULL lets the planners use the partial index on stopped_at).
_DOOMED: Final = "stopped_at IS NOT NULL AND stopped_at < %s AND state = 'stopped'"
_ORPHAN: Final = (
    "received_at < %s AND id <> %s"
    " AND NOT EXISTS (SELECT 1 FROM streams WHERE streams.stream_id = deliveries.stream_id)"
)
_NEWEST: Final = (
    "SELECT (SELECT id FROM deliveries ORDER BY id DESC LIMIT 1),"
    " (SELECT stream_id FROM deliveries ORDER BY id DESC LIMIT 1),"
    " (SELECT stream_id FROM transitions ORDER BY id DESC LIMIT 1)"
)
# A removed chain's record: its size, first and last rows, and its last row's hash.
_SQLITE_CHAINS: Final = (
    "SELECT g.stream_id, g.n, g.f, t.id, t.tx_id, t.chain_hash FROM (SELECT stream_id,"
    " count(*) AS n, min(id) AS f, max(id) AS l FROM transitions WHERE {} GROUP BY stream_id)"
    " AS g JOIN transitions AS t ON t.id = g.l"
)
_SQLITE_PRUNED_CHAIN: Final = (
    "INSERT INTO pruned_chains"
    " (run, pruned_at, stream_id, transitions, first_id, last_id, last_tx_id, head)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_PG_REMOVE: Final = "SELECT rtms_lifecycle_prune_streams(%s, %s, %s)"
_RECORD: Final = (
    "INSERT INTO prunes (run, pruned_at, cutoff, streams, deliveries, transitions, alerts)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


class _Pruner:
    """One prune's connection, transactions and SQL, on SQLite or PostgreSQL."""

    def __init__(self, store: Store, cutoff: int, now: Callable[[], int]) -> None:
        self.store = store
        self.cutoff = cutoff
        self.now = now
        self.run = uuid.uuid4().hex
        self.postgres = store.dialect == "postgresql"
        self.conn: Any = None
        self.opened = 0

    # --- the connection -----------------------------------------------------------------------

    @contextmanager
    def connected(self) -> Iterator[None]:
        # Before opening: a file restored meanwhile fails the first step, never a later one.
        self.opened = self.store.restores
        held = self.store.engine.raw_connection()
        self.conn = held.driver_connection
        if not self.postgres:
            # Waits for another process's lock in slices, a Ctrl-C seen between two.
            self.conn.execute(f"PRAGMA busy_timeout={SQLITE_WAIT_SLICE_MS}")
        try:
            yield
        except BaseException:
            held.invalidate()
            raise
        else:
            if not self.postgres:
                self.conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            held.close()

    @contextmanager
    def step(self, write: bool = True) -> Iterator[None]:
        """One transaction; a writing one may delete audit rows of streams it removed."""
        conn = self.conn
        if not self.postgres:
            with self.store.guarded(opened=self.opened) if write else _nothing():
                if write:
                    # Only this connection's deletes pass the guard, and only until the commit.
                    conn.create_function(PRUNING_FUNCTION, 0, PRUNING)
                if write:
                    execute_when_unlocked(conn, "BEGIN IMMEDIATE", self.store.sqlite_path)
                else:
                    conn.execute("BEGIN")
                try:
                    yield
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    if write:
                        conn.create_function(PRUNING_FUNCTION, 0, not_pruning)
            return
        try:
            yield
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    def sql(self, statement: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            return self.conn.execute(statement, params)
        return self.conn.execute(statement.replace("%s", "?"), params)

    def one(self, statement: str, params: Sequence[Any] = ()) -> Any:
        row = self.sql(statement, params).fetchone()
        return row[0] if row is not None and len(row) == 1 else row

    def among(self, column: str, values: Sequence[str], *, negate: bool = False) -> str:
        """``column`` (not) among ``values``: a condition, with one parameter (PostgreSQL's
        array) or one per value (SQLite)."""
        if self.postgres:
            return f"{column} {'<> ALL' if negate else '= ANY'}(%s)"
        return f"{column} {'NOT IN' if negate else 'IN'} ({', '.join(['%s'] * len(values))})"

    def values(self, values: Sequence[str]) -> list[Any]:
        return [list(values)] if self.postgres else list(values)

    # --- what goes ----------------------------------------------------------------------------

    def keep(self) -> tuple[int, list[str]]:
        """The newest delivery's id, and the streams of the newest delivery and transition."""
        newest, *streams = self.sql(_NEWEST).fetchone()
        return newest if newest is not None else 0, sorted({s for s in streams if s})

    def doomed(self, keep: list[str]) -> tuple[str, list[Any]]:
        condition = f"{_DOOMED} AND {self.among('stream_id', keep, negate=True)}"
        return condition, [self.cutoff, *self.values(keep)]

    def count(self) -> tuple[int, int, int, int]:
        """What a prune would remove now: streams, deliveries, transitions, alerts."""
        with self.step(write=False):
            newest, keep = self.keep()
            where, params = self.doomed(keep)
            ids = f"SELECT stream_id FROM streams WHERE {where}"
            streams = self.one(f"SELECT count(*) FROM streams WHERE {where}", params)
            transitions = self.one(
                f"SELECT count(*) FROM transitions WHERE stream_id IN ({ids})", params
            )
            deliveries = sum(
                self.one(
                    f"SELECT count(*) FROM deliveries WHERE stream_id IN ({ids}) AND {part}",
                    params,
                )
                for part in STREAM_DELIVERY_PREDICATES
            )
            alerts = self.one(
                "SELECT count(*) FROM concurrency_alerts WHERE received_at < %s", [self.cutoff]
            )
            deliveries += sum(self.orphans(newest, delete=False))
        return streams, deliveries, transitions, alerts

    def streams(self) -> Iterator[tuple[int, int, int]]:
        """Remove stopped streams step by step: yields (streams, deliveries, transitions)."""
        while True:
            with self.step():
                _, keep = self.keep()
                where, params = self.doomed(keep)
                lock = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
                ids = [
                    row[0]
                    for row in self.sql(
                        f"SELECT stream_id FROM streams WHERE {where} ORDER BY stopped_at"
                        f" LIMIT %s{lock}",
                        [*params, _STREAMS_PER_STEP],
                    )
                ]
                if not ids:
                    return
                counts = self.remove(ids)
                self.record(*counts, 0)
            yield counts

    def remove(self, ids: list[str]) -> tuple[int, int, int]:
        """Remove these streams, their history and deliveries, recording the chains removed:
        (streams, deliveries, transitions)."""
        if self.postgres:
            # As the owner, in the function only the owner may execute (migration 0011).
            found = self.one(_PG_REMOVE, [ids, self.run, self.now()])
            return found[0], found[1], found[2]
        chains = self.sql(_SQLITE_CHAINS.format(self.among("stream_id", ids)), ids).fetchall()
        removed: Counter[str] = Counter()
        # The stream rows first: the guard lets only transitions of absent streams go. A
        # stream's deliveries are in two partial indexes: one statement for each.
        for table, part in (
            ("streams", ""),
            ("transitions", ""),
            ("claim_history", ""),
            ("stream_claims", ""),
            ("claim_queue", ""),
            *(("deliveries", f" AND {part}") for part in STREAM_DELIVERY_PREDICATES),
        ):
            removed[table] += self.sql(
                f"DELETE FROM {table} WHERE {self.among('stream_id', ids)}{part}", ids
            ).rowcount
        # Recorded after the deletes, so that the record takes pages they freed.
        self.conn.executemany(_SQLITE_PRUNED_CHAIN, [(self.run, self.now(), *c) for c in chains])
        return removed["streams"], removed["deliveries"], removed["transitions"]

    def orphans(self, newest: int | None = None, *, delete: bool = True) -> Iterator[int]:
        """Deliveries received before the cutoff that belong to no stream, walked in id order.

        Ids follow reception, so the walk stops at the first stretch received after the cutoff;
        what it passes on the way are kept streams' deliveries.
        """
        after = -1
        while True:
            with self.step(write=delete) if delete else _nothing():
                rows = self.sql(
                    "SELECT id, received_at FROM deliveries WHERE id > %s ORDER BY id LIMIT %s",
                    [after, _DELIVERIES_PER_STEP],
                ).fetchall()
                if not rows or min(received for _, received in rows) >= self.cutoff:
                    return
                if newest is None or delete:
                    newest, _ = self.keep()
                where = f"id > %s AND id <= %s AND {_ORPHAN}"
                params = [after, rows[-1][0], self.cutoff, newest]
                if delete:
                    found = self.sql(f"DELETE FROM deliveries WHERE {where}", params).rowcount
                    if found:
                        self.record(0, found, 0, 0)
                else:
                    found = self.one(f"SELECT count(*) FROM deliveries WHERE {where}", params)
            after = rows[-1][0]
            yield found

    def alerts(self) -> int:
        """Remove old concurrency alerts and expired dashboard sign-outs, and record the
        prune's last step."""
        with self.step():
            found: int = self.sql(
                "DELETE FROM concurrency_alerts WHERE received_at < %s", [self.cutoff]
            ).rowcount
            self.sql(FORGET_EXPIRED.replace(":now", "%s"), [self.now()])
            self.record(0, 0, 0, found)
        return found

    def record(self, streams: int, deliveries: int, transitions: int, alerts: int) -> None:
        self.sql(
            _RECORD,
            [self.run, self.now(), self.cutoff, streams, deliveries, transitions, alerts],
        )

    # --- space --------------------------------------------------------------------------------

    def size(self, pages: str = "page_count") -> int:
        """The database's size, or (SQLite, ``pages="freelist_count"``) its free pages'."""
        if self.postgres:
            size: int = self.one("SELECT pg_database_size(current_database())")
            self.conn.rollback()
            return size
        return int(self.one(f"PRAGMA {pages}")) * int(self.one("PRAGMA page_size"))

    def vacuum(self, full: bool) -> None:
        """With ``full``, give the freed space back: to the file system (SQLite), for reuse at
        once (PostgreSQL; autovacuum does it later anyway)."""
        conn = self.conn
        if self.postgres:
            if full:
                conn.autocommit = True
                try:
                    conn.execute(
                        "VACUUM (ANALYZE) streams, deliveries, transitions, concurrency_alerts"
                    )
                finally:
                    conn.autocommit = False
            return
        if full:
            # Rewrites the file without its free pages (writers wait meanwhile).
            with self.store.guarded(opened=self.opened):
                execute_when_unlocked(conn, "VACUUM", self.store.sqlite_path)
        # The write-ahead log holds a copy of every page the prune touched. Busy (a reader or a
        # writer of another process), it is tried again a slice at a time, as a lock is awaited.
        until = time.monotonic() + lock_wait_s()
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
            if time.monotonic() >= until:
                break  # the log is copied later, by the next checkpoint of any connection


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def prune(
    store: Store, cutoff: int, now: Callable[[], int], *, dry_run: bool, vacuum: bool
) -> PruneResult:
    """Remove (or with ``dry_run`` count) what is older than ``cutoff`` (epoch ms); see
    :mod:`rtms_lifecycle.retention`. :class:`StoreError` if the database fails."""
    pruner = _Pruner(store, cutoff, now)
    # What the committed steps removed: streams, deliveries, transitions, alerts.
    done = [0, 0, 0, 0]
    complete = False
    try:
        with pruner.connected():
            if dry_run:
                counts = pruner.count()
                return PruneResult(cutoff, *counts, dry_run=True, reclaimed_bytes=None)
            before = pruner.size()
            for removed in pruner.streams():
                for i, n in enumerate(removed):
                    done[i] += n
            for found in pruner.orphans():
                done[1] += found
            done[3] = pruner.alerts()
            complete = True
            pruner.vacuum(vacuum)
            reclaimed = max(before - pruner.size(), 0)
            free = None if pruner.postgres else pruner.size("freelist_count")
    except KeyboardInterrupt as exc:
        if dry_run:
            raise
        partial = _result(cutoff, _recorded(store, pruner.run) or done, None, None)
        raise PruneInterrupted(partial, complete=complete) from exc
    except (sqlite3.Error, _psycopg_errors()) as exc:
        if getattr(exc, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            # A receiver's role may not delete (docs/deploying-postgres.md, two roles).
            raise DatabaseError(
                f"the prune failed: {first_line(exc)}: a prune runs as the database's owner"
            ) from exc
        raise StoreError(f"the prune failed: {exc}{_so_far(done)}") from exc
    except StoreError as exc:  # the file checks of Store.guarded
        raise StoreError(f"{exc}{_so_far(done)}") from exc
    return _result(cutoff, done, reclaimed, free)


def _result(
    cutoff: int, done: Sequence[int], reclaimed: int | None, free: int | None
) -> PruneResult:
    streams, deliveries, transitions, alerts = done
    return PruneResult(cutoff, streams, deliveries, transitions, alerts, False, reclaimed, free)


def _recorded(store: Store, run: str) -> list[int] | None:
    """What the run's records say it removed: exact, where the counts kept in memory may miss
    a step that a Ctrl-C interrupted between its commit and its count. None if unreadable."""
    query = select(*(func.coalesce(func.sum(prunes.c[name]), 0) for name in _COUNTED)).where(
        prunes.c.run == run
    )
    try:
        with store.read() as conn:
            row = conn.execute(query).one()
    except Exception:  # a database that failed meanwhile: the counts in memory
        return None
    return [int(n) for n in row]


def _so_far(done: Sequence[int]) -> str:
    """What a prune that stopped had removed, for its error: nothing if it removed nothing."""
    if not any(done):
        return ""
    streams, deliveries, transitions, alerts = done
    return (
        f"; before that it removed {streams:,} streams, {deliveries:,} deliveries, "
        f"{transitions:,} transitions and {alerts:,} alerts (recorded in `prunes`), and left "
        "the rest: run it again to finish"
    )


def _psycopg_errors() -> type[Exception]:
    try:
        import psycopg
    except ImportError:  # without the "postgres" extra there is no PostgreSQL to fail
        return sqlite3.Error
    return psycopg.Error


def list_prunes(store: Store, limit: int | None) -> list[PruneRecord]:
    """Recorded prunes, newest first."""
    # A prune's last step (alerts) always records a row that removed no stream, delivery or
    # transition, and only it does: a run without that row was interrupted (or still runs).
    last_step = and_(prunes.c.streams == 0, prunes.c.deliveries == 0, prunes.c.transitions == 0)
    query = (
        select(
            prunes.c.run,
            func.min(prunes.c.pruned_at),
            func.max(prunes.c.pruned_at),
            func.min(prunes.c.cutoff),
            *(func.sum(prunes.c[name]) for name in _COUNTED),
            func.max(case((last_step, 1), else_=0)),
        )
        .group_by(prunes.c.run)
        .order_by(func.min(prunes.c.id).desc())
    )
    if limit is not None:
        query = query.limit(limit)
    with store.read() as conn:
        found = conn.execute(query).all()
    records = []
    for row in found:
        begun, ended, cut, streams, deliveries, transitions, alerts, done = (
            int(n) for n in row[1:]
        )
        records.append(
            PruneRecord(
                row[0], begun, ended, cut, streams, deliveries, transitions, alerts, done == 1
            )
        )
    return records
