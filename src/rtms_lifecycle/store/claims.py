"""The SQL of claims: which worker holds which live stream, under a lease and a fencing token.

Every write is one :meth:`Store.transaction` (the store's time budget and file checks; on
SQLite, its one writer queue). On PostgreSQL a claim locks the stream row it takes with ``FOR
NO KEY UPDATE SKIP LOCKED``: concurrent claimers never wait on each other, each skips the rows
the others are taking. A renewal or report locks the claim row only, a release the stream row
(shared) then the claim row. A stop ends the claim in the transaction that records it: a
trigger on ``streams`` (migration 0010).

A claim finds a free stream in ``claim_queue`` (the live streams no claim holds, in start
order) or among the claims whose lease ran out (``ix_stream_claims_expires_at``), never by
reading the held streams (migration 0015, docs/decisions/0109-claim-queue.md).

On PostgreSQL a claim, a renewal and a release are each one call of a PL/pgSQL function
(migrations 0016 and 0017) that keeps the rules of the generic path here: a change to the rules
changes both, or ``tests/test_claims_differential.py`` fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import bindparam, text

from rtms_lifecycle.exceptions import ClaimLost
from rtms_lifecycle.records import Claim, ClaimEvent, ClaimEventKind, ClaimStats, Stream
from rtms_lifecycle.store.queries import stream as read_stream
from rtms_lifecycle.store.rows import STREAM_RECORD_COLUMNS, in_lists, streams_from_rows
from rtms_lifecycle.store.tables import (
    HELD_CLAIM_PREDICATE,
    LIVE_PREDICATE,
    stream_claims,
    streams,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from rtms_lifecycle.store.core import Store

__all__ = [
    "ClaimFilter",
    "claim",
    "claim_history",
    "claimed",
    "connected_after_stop",
    "holders",
    "release",
    "renew",
    "report",
    "stats",
    "unclaimed",
    "unconnected",
]

#: (scopes, scope_id, account_id): which streams a worker takes
ClaimFilter = tuple[Sequence[str] | None, str | None, str | None]

_CLAIM_NAMES: Final = (
    "stream_id",
    "token",
    "worker",
    "claimed_at",
    "renewed_at",
    "expires_at",
    "ended_at",
    "end_reason",
    "connected",
)
_CLAIM_COLUMNS: Final = ", ".join(f"c.{name}" for name in _CLAIM_NAMES)
# A live stream a worker may take: started, resumed or interrupted (never ``new``); the live
# predicate verbatim, so that SQLite reads the partial index.
_LIVE_STREAMS: Final = f"s.{LIVE_PREDICATE} AND s.state <> 'new'"
_FREE: Final = "(c.stream_id IS NULL OR c.ended_at IS NOT NULL OR c.expires_at <= :now)"
_HELD: Final = "c.ended_at IS NULL AND c.expires_at > :now"
_INSERT_HISTORY: Final = text(
    "INSERT INTO claim_history (stream_id, token, worker, event, source, at, recorded_at, reason)"
    " VALUES (:sid, :token, :worker, :event, :source, :at, :now, :reason)"
)
_DEQUEUE: Final = text("DELETE FROM claim_queue WHERE stream_id = :sid")
_ENQUEUE: Final = text(
    "INSERT INTO claim_queue (stream_id, started_at) SELECT s.stream_id, s.started_at"
    f" FROM streams AS s WHERE s.stream_id = :sid AND {_LIVE_STREAMS}"
    " ON CONFLICT (stream_id) DO NOTHING"
)
_SHARE_STREAM: Final = text("SELECT 1 FROM streams WHERE stream_id = :sid FOR SHARE")
_STREAM_RECORD: Final = ", ".join(f"s.{name}" for name in STREAM_RECORD_COLUMNS)
# How often a claim looks again after a candidate was renewed under it (a late renewal won).
_CLAIM_ATTEMPTS: Final = 5


def _history(
    conn: Connection,
    sid: str,
    token: int,
    worker: str,
    event: ClaimEventKind,
    source: str,
    at: int,
    now: int,
    reason: str | None = None,
) -> None:
    conn.execute(
        _INSERT_HISTORY,
        {
            "sid": sid,
            "token": token,
            "worker": worker,
            "event": event.value,
            "source": source,
            "at": at,
            "now": now,
            "reason": reason,
        },
    )


def _lock(conn: Connection) -> str:
    return " FOR UPDATE" if conn.dialect.name == "postgresql" else ""


def _claim_row(conn: Connection, sid: str, lock: str = "") -> Any:
    return conn.execute(
        text(f"SELECT {_CLAIM_COLUMNS} FROM stream_claims AS c WHERE c.stream_id = :sid{lock}"),
        {"sid": sid},
    ).first()


def _locked_claim_row(conn: Connection, sid: str) -> Any:
    return _claim_row(conn, sid, _lock(conn))


def _as_claim(row: Any, stream: Stream) -> Claim:
    if row[6] is None:
        stream.worker, stream.connected = row[2], bool(row[8])
    return Claim(
        stream_id=row[0],
        worker=row[2],
        token=int(row[1]),
        expires_at=int(row[5]),
        stream=stream,
        claimed_at=int(row[3]),
        renewed_at=int(row[4]),
        connected=bool(row[8]),
        ended_at=row[6],
        end_reason=row[7],
    )


def _filters(where: ClaimFilter, params: dict[str, Any]) -> str:
    scopes, scope_id, account_id = where
    sql = ""
    if scopes:
        names = []
        for i, scope in enumerate(sorted(scopes)):
            params[f"scope{i}"] = scope
            names.append(f":scope{i}")
        sql += f" AND s.scope IN ({', '.join(names)})"
    if scope_id is not None:
        params["scope_id"] = scope_id
        sql += " AND s.scope_id = :scope_id"
    if account_id is not None:
        params["account_id"] = account_id
        sql += " AND s.account_id = :account_id"
    return sql


def claim(
    store: Store,
    worker: str,
    lease_ms: int,
    where: ClaimFilter,
    now: int,
    deadline: float | None,
    exclude: Sequence[str] = (),
    *,
    generic: bool = False,
) -> Claim | None:
    """Take the live stream that started first among those nobody holds (and not one of
    ``exclude``); None if none.

    On PostgreSQL one statement does it (``rtms_lifecycle_claim``, migration 0016) unless
    ``generic``: the path every database can run, which tests compare it with.
    """
    if store.dialect == "postgresql" and not generic:
        return _claim_in_postgres(store, worker, lease_ms, where, now, deadline, exclude)
    for _ in range(_CLAIM_ATTEMPTS):
        with store.transaction(deadline) as conn:
            taken = _claim_once(conn, worker, lease_ms, where, now, exclude)
        if taken is None or isinstance(taken, Claim):
            return taken
    return None


# One round trip: the function's token and the stream's columns, read under its lock.
_PG_CLAIM: Final = (
    f"SELECT c.token, {', '.join(f'(c.stream).{name}' for name in STREAM_RECORD_COLUMNS)}"
    " FROM rtms_lifecycle_claim($1::text, $2::bigint, $3::bigint, $4::text[], $5::text,"
    " $6::text, $7::text[], $8::integer) AS c"
)


def _pg_load(python_type: type) -> Callable[[bytes], Any]:
    """How a column of ``python_type`` is read from libpq's text."""
    if python_type is int:
        return int
    if python_type is bool:
        return lambda value: value == b"t"
    return bytes.decode


#: How each column of a statement's row is read from libpq's text.
_PgTypes = tuple[Callable[[bytes], Any], ...]
_PG_STREAM_TYPES: Final[_PgTypes] = tuple(
    _pg_load(streams.c[name].type.python_type) for name in STREAM_RECORD_COLUMNS
)
_PG_CLAIM_TYPES: Final[_PgTypes] = (int, *_PG_STREAM_TYPES)


def _pg_array(values: Sequence[str]) -> str:
    """A ``text[]`` literal: libpq sends every parameter as text."""
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"


def _claim_in_postgres(
    store: Store,
    worker: str,
    lease_ms: int,
    where: ClaimFilter,
    now: int,
    deadline: float | None,
    exclude: Sequence[str],
) -> Claim | None:
    scopes, scope_id, account_id = where
    params = (
        worker,
        now,
        lease_ms,
        _pg_array(sorted(scopes)) if scopes else None,
        scope_id,
        account_id,
        _pg_array(exclude),
        _CLAIM_ATTEMPTS,
    )
    rows = store.statement(
        b"rtms_lifecycle_claim", _PG_CLAIM, params, _PG_CLAIM_TYPES, deadline, "claim a stream"
    )
    if not rows:
        return None
    token, *record = rows[0]
    (stream,) = streams_from_rows([tuple(record)])
    sid = stream.stream_id
    return _as_claim((sid, token, worker, now, now, now + lease_ms, None, None, False), stream)


def _candidate(
    conn: Connection, where: ClaimFilter, now: int, exclude: Sequence[str]
) -> tuple[Stream, bool] | None:
    """The stream to take (locked on PostgreSQL, so read as it is now) and whether it came from
    the queue: the older of the first queued stream and the first held stream whose lease ran
    out. Each is an index walk that stops at the first row it can lock, however many are held."""
    params: dict[str, Any] = {"now": now}
    sql = _filters(where, params)
    if exclude:
        # One statement whatever the list's length (a worker passes the streams it holds): a
        # mark per stream compiled and cached a statement for every length.
        params["exclude"] = list(exclude)
        sql += " AND s.stream_id NOT IN :exclude"
    postgres = conn.dialect.name == "postgresql"
    # Locking the queue or claim row too, which the taker deletes or updates, makes a claimer
    # that reaches the row after the taker committed skip it, instead of taking the stream
    # row (only locked, never changed) and finding the claim held.
    lock = " FOR NO KEY UPDATE OF s, {} SKIP LOCKED" if postgres else ""
    # SQLite's planner would rather scan the live streams' covering index and sort them: a
    # CROSS JOIN keeps the queue (or the expiry index) the outer loop.
    join = "JOIN" if postgres else "CROSS JOIN"
    found: list[tuple[int | None, str, Stream, bool]] = []
    for source, order, queued, alias in (
        (
            f"claim_queue AS q {join} streams AS s ON s.stream_id = q.stream_id WHERE",
            "q.started_at, q.stream_id",
            True,
            "q",
        ),
        (
            f"stream_claims AS c {join} streams AS s ON s.stream_id = c.stream_id"
            f" WHERE c.{HELD_CLAIM_PREDICATE} AND c.expires_at <= :now AND",
            "s.started_at, s.stream_id",
            False,
            "c",
        ),
    ):
        statement = text(
            f"SELECT {_STREAM_RECORD} FROM {source} {_LIVE_STREAMS}{sql}"
            f" ORDER BY {order} LIMIT 1{lock.format(alias)}"
        )
        if exclude:
            statement = statement.bindparams(bindparam("exclude", expanding=True))
        row = conn.execute(statement, params).first()
        if row is not None:
            (stream,) = streams_from_rows([tuple(row)])
            found.append((stream.started_at, stream.stream_id, stream, queued))
    if not found:
        return None
    # The databases' own order of a missing start: last on PostgreSQL, first on SQLite.
    *_, stream, queued = min(found, key=lambda f: (postgres == (f[0] is None), f[0] or 0, f[1]))
    return stream, queued


def _claim_once(
    conn: Connection,
    worker: str,
    lease_ms: int,
    where: ClaimFilter,
    now: int,
    exclude: Sequence[str],
) -> Claim | Literal[False] | None:
    candidate = _candidate(conn, where, now, exclude)
    if candidate is None:
        return None
    stream, queued = candidate
    sid = stream.stream_id
    previous = _locked_claim_row(conn, sid)
    values = {"sid": sid, "worker": worker, "now": now, "until": now + lease_ms}
    if previous is None:
        conn.execute(
            text(
                "INSERT INTO stream_claims (stream_id, token, worker, claimed_at, renewed_at,"
                " expires_at, connected) VALUES (:sid, 1, :worker, :now, :now, :until, :no)"
            ),
            {**values, "no": False},
        )
        token = 1
    else:
        if previous[6] is None and previous[5] > now:
            if queued:  # held: the queue's row is stale
                conn.execute(_DEQUEUE, {"sid": sid})
            return False  # renewed late between the two reads: another candidate
        if previous[6] is None:
            # The holder's lease ran out and nobody said so: its end is recorded now.
            _history(
                conn,
                sid,
                previous[1],
                previous[2],
                ClaimEventKind.EXPIRED,
                "system",
                previous[5],
                now,
                f"seen by {worker}",
            )
        token = int(previous[1]) + 1
        conn.execute(
            text(
                "UPDATE stream_claims SET token = :token, worker = :worker, claimed_at = :now,"
                " renewed_at = :now, expires_at = :until, ended_at = NULL, end_reason = NULL,"
                " connected = :no, connected_at = NULL, disconnected_at = NULL"
                " WHERE stream_id = :sid"
            ),
            {**values, "token": token, "no": False},
        )
    conn.execute(_DEQUEUE, {"sid": sid})
    _history(conn, sid, token, worker, ClaimEventKind.CLAIMED, "worker", now, now)
    # Its row is locked (PostgreSQL) or the only writer's (SQLite): nothing to read again.
    return _as_claim((sid, token, worker, now, now, now + lease_ms, None, None, False), stream)


def _lost(conn: Connection, sid: str, token: int, row: Any, now: int) -> ClaimLost:
    """Why the claim ``token`` of ``sid`` is no longer held (``row``: the stream's newest)."""
    stream = read_stream(conn, sid)
    if stream is not None and stream.stopped:
        return ClaimLost(
            "stopped",
            f"the claim on {sid} was lost: the stream stopped",
            stop_reason=stream.stop_reason,
        )
    if row is None:
        return ClaimLost("released", f"the claim on {sid} is not held")
    if int(row[1]) != token:
        reason = "taken" if row[6] is None and row[5] > now else "expired"
        return ClaimLost(reason, f"the claim on {sid} was lost: {reason} (token {row[1]} now)")
    reason = row[7] or "released"
    return ClaimLost(reason, f"the claim on {sid} was lost: {reason}")


# A renewal and a release on PostgreSQL: one call each (migration 0017) of functions that keep
# the rules of ``renew`` and ``release`` below; a change to those rules changes both.
_PG_RENEW: Final = (
    f"SELECT {', '.join(f'(r.claim).{name}' for name in _CLAIM_NAMES)},"
    f" {', '.join(f'(r.stream).{name}' for name in STREAM_RECORD_COLUMNS)}"
    " FROM rtms_lifecycle_renew($1::text, $2::bigint, $3::bigint, $4::bigint) AS r"
)
_PG_RENEW_TYPES: Final[_PgTypes] = (
    *(_pg_load(stream_claims.c[name].type.python_type) for name in _CLAIM_NAMES),
    *_PG_STREAM_TYPES,
)
_PG_RELEASE: Final = "SELECT rtms_lifecycle_release($1::text, $2::bigint, $3::text, $4::bigint)"
_PG_RELEASE_TYPES: Final[_PgTypes] = (_pg_load(bool),)


def renew(
    store: Store,
    sid: str,
    token: int,
    lease_ms: int,
    now: int,
    deadline: float | None,
    *,
    generic: bool = False,
) -> Claim:
    """Extend the lease of claim ``token``; :class:`ClaimLost` once it is not held.

    On PostgreSQL one statement does it (``rtms_lifecycle_renew``, migration 0017) unless
    ``generic``; a lost claim's reason is then read in a transaction of its own.
    """
    if store.dialect == "postgresql" and not generic:
        rows = store.statement(
            b"rtms_lifecycle_renew",
            _PG_RENEW,
            (sid, token, lease_ms, now),
            _PG_RENEW_TYPES,
            deadline,
            "renew a claim",
        )
        if rows:
            row = rows[0]
            (record,) = streams_from_rows([row[len(_CLAIM_NAMES) :]])
            return _as_claim(row, record)
        # The function wrote nothing; a claim lost stays lost (tokens only grow).
        with store.transaction(deadline) as conn:
            raise _lost(conn, sid, token, _locked_claim_row(conn, sid), now)
    with store.transaction(deadline) as conn:
        row = _locked_claim_row(conn, sid)
        if row is None or int(row[1]) != token or row[6] is not None:
            raise _lost(conn, sid, token, row, now)
        if row[5] <= now:
            # Nobody took the stream meanwhile: the lease goes on, and the gap is on record.
            _history(conn, sid, token, row[2], ClaimEventKind.RENEWED_LATE, "worker", now, now)
        conn.execute(
            text(
                "UPDATE stream_claims SET renewed_at = :now, expires_at = :until"
                " WHERE stream_id = :sid"
            ),
            {"sid": sid, "now": now, "until": now + lease_ms},
        )
        stream = read_stream(conn, sid)
        assert stream is not None
        return _as_claim(_claim_row(conn, sid), stream)


def release(
    store: Store,
    sid: str,
    token: int,
    reason: str | None,
    now: int,
    deadline: float | None,
    *,
    generic: bool = False,
) -> bool:
    """End claim ``token``; False (nothing written) if it had already ended or been replaced.

    On PostgreSQL one statement does it (``rtms_lifecycle_release``, migration 0017) unless
    ``generic``.
    """
    if store.dialect == "postgresql" and not generic:
        ((released,),) = store.statement(
            b"rtms_lifecycle_release",
            _PG_RELEASE,
            (sid, token, reason, now),
            _PG_RELEASE_TYPES,
            deadline,
            "release a claim",
        )
        return bool(released)
    with store.transaction(deadline) as conn:
        # The stream row first, as a claim and a stop lock it: a stop waits for the release,
        # so that it finds (and removes) the queue row the release adds.
        if conn.dialect.name == "postgresql":
            conn.execute(_SHARE_STREAM, {"sid": sid})
        row = _locked_claim_row(conn, sid)
        if row is None or int(row[1]) != token or row[6] is not None:
            return False
        conn.execute(_ENQUEUE, {"sid": sid})
        conn.execute(
            text(
                "UPDATE stream_claims SET ended_at = :now, end_reason = 'released'"
                " WHERE stream_id = :sid"
            ),
            {"sid": sid, "now": now},
        )
        _history(conn, sid, token, row[2], ClaimEventKind.RELEASED, "worker", now, now, reason)
        return True


def report(
    store: Store,
    sid: str,
    token: int,
    connected: bool,
    at: int,
    reason: int | None,
    now: int,
    deadline: float | None,
) -> None:
    """Record what the holder of claim ``token`` saw; :class:`ClaimLost` for a stale token.

    A disconnection is recorded for the stream's last claim even once a stop ended it: the
    worker says it left the stream Zoom ended.
    """
    with store.transaction(deadline) as conn:
        row = _locked_claim_row(conn, sid)
        stale = row is None or int(row[1]) != token
        if stale or (connected and row[6] is not None):
            raise _lost(conn, sid, token, row, now)
        column = "connected_at" if connected else "disconnected_at"
        conn.execute(
            text(
                f"UPDATE stream_claims SET connected = :on, {column} = :at WHERE stream_id = :sid"
            ),
            {"sid": sid, "on": connected, "at": at},
        )
        event = ClaimEventKind.CONNECTED if connected else ClaimEventKind.DISCONNECTED
        words = None if reason is None else str(reason)
        _history(conn, sid, token, row[2], event, "app", at, now, words)


def _claims(conn: Connection, where: str, params: dict[str, Any]) -> list[Claim]:
    columns = ", ".join(f"s.{name}" for name in STREAM_RECORD_COLUMNS)
    rows = conn.execute(
        text(
            f"SELECT {_CLAIM_COLUMNS}, {columns} FROM stream_claims AS c"
            f" JOIN streams AS s ON s.stream_id = c.stream_id WHERE {where}"
            " ORDER BY c.worker, c.claimed_at, c.stream_id"
        ),
        params,
    ).all()
    found = []
    for row in rows:
        (stream,) = streams_from_rows([tuple(row[9:])])
        found.append(_as_claim(row, stream))
    return found


def claimed(conn: Connection, worker: str | None, now: int) -> list[Claim]:
    """Claims not ended (expired ones included) of live streams, by worker."""
    params: dict[str, Any] = {"now": now}
    where = f"c.ended_at IS NULL AND {_LIVE_STREAMS}"
    if worker is not None:
        params["worker"] = worker
        where += " AND c.worker = :worker"
    return _claims(conn, where, params)


def connected_after_stop(conn: Connection) -> list[Claim]:
    """Last claims of stopped streams whose worker still reports media connected."""
    return _claims(conn, "c.end_reason = 'stopped' AND c.connected", {})


def _live(conn: Connection, where: str, params: dict[str, Any]) -> list[Stream]:
    columns = ", ".join(f"s.{name}" for name in STREAM_RECORD_COLUMNS)
    rows = conn.execute(
        text(
            f"SELECT {columns}, c.worker, c.connected, c.ended_at, c.expires_at FROM streams AS s"
            " LEFT JOIN stream_claims AS c ON c.stream_id = s.stream_id"
            f" WHERE {_LIVE_STREAMS} AND {where} ORDER BY s.started_at, s.stream_id"
        ),
        params,
    ).all()
    found = []
    for row in rows:
        (stream,) = streams_from_rows([tuple(row[:-4])])
        worker, connected, ended, expires = row[-4:]
        if worker is not None and ended is None and expires > params["now"]:
            stream.worker, stream.connected = worker, bool(connected)
        found.append(stream)
    return found


def unclaimed(conn: Connection, started_before: int, now: int) -> list[Stream]:
    """Live streams started before ``started_before`` that nobody holds, oldest first."""
    return _live(
        conn, f"s.started_at <= :before AND {_FREE}", {"now": now, "before": started_before}
    )


def unconnected(conn: Connection, started_before: int, now: int) -> list[Stream]:
    """Live streams started before ``started_before`` whose holder (if any) reports no media."""
    return _live(
        conn,
        f"s.started_at <= :before AND {_UNCONNECTED}",
        {"now": now, "before": started_before},
    )


# One statement whatever the number of streams: one with a mark per stream was a new entry of
# SQLAlchemy's compiled cache for every count of live streams the dashboard listed (500 entries
# kept, up to 750), 2,400 Python objects more each time in a live receiver.
_HOLDERS: Final = text(
    "SELECT c.stream_id, c.worker, c.connected FROM stream_claims AS c"
    f" WHERE c.stream_id IN :ids AND {_HELD}"
).bindparams(bindparam("ids", expanding=True))


def holders(conn: Connection, stream_ids: Iterable[str], now: int) -> dict[str, tuple[str, bool]]:
    """The worker holding each of these streams (an unexpired lease), and whether connected."""
    found: dict[str, tuple[str, bool]] = {}
    for part in in_lists(list(stream_ids)):
        for sid, worker, connected in conn.execute(_HOLDERS, {"ids": list(part), "now": now}):
            found[sid] = (worker, bool(connected))
    return found


def claim_history(conn: Connection, stream_id: str) -> list[ClaimEvent]:
    """A stream's claim history, in the order it was recorded."""
    rows = conn.execute(
        text(
            "SELECT id, stream_id, token, worker, event, source, at, recorded_at, reason"
            " FROM claim_history WHERE stream_id = :sid ORDER BY id"
        ),
        {"sid": stream_id},
    ).all()
    return [ClaimEvent(*row) for row in rows]


# Media no worker reports connected now: unheld, or held but not connected.
_UNCONNECTED: Final = (
    "NOT (c.stream_id IS NOT NULL AND c.ended_at IS NULL AND c.expires_at > :now AND c.connected)"
)


def stats(conn: Connection, started_before: int, now: int, bounds_ms: Sequence[int]) -> ClaimStats:
    """Counts of live streams unclaimed and unconnected, and a histogram of their first
    connections' latency: two aggregate queries, one row each (a scrape reads no stream)."""
    counts = conn.execute(
        text(
            f"SELECT coalesce(sum(CASE WHEN {_FREE} THEN 1 ELSE 0 END), 0),"
            f" coalesce(sum(CASE WHEN {_UNCONNECTED} THEN 1 ELSE 0 END), 0)"
            " FROM streams AS s LEFT JOIN stream_claims AS c ON c.stream_id = s.stream_id"
            f" WHERE {_LIVE_STREAMS} AND s.started_at <= :before"
        ),
        {"now": now, "before": started_before},
    ).one()
    params: dict[str, Any] = {f"b{i}": bound for i, bound in enumerate(bounds_ms)}
    buckets = "".join(
        f", coalesce(sum(CASE WHEN lat <= :b{i} THEN 1 ELSE 0 END), 0)"
        for i in range(len(bounds_ms))
    )
    # The first connection of each live stream: one index probe of its history per stream.
    latency = conn.execute(
        text(
            f"SELECT count(lat), coalesce(sum(lat), 0){buckets} FROM ("
            "SELECT CASE WHEN f.first < f.started_at THEN 0 ELSE f.first - f.started_at END"
            " AS lat FROM (SELECT s.started_at AS started_at,"
            " (SELECT min(h.at) FROM claim_history AS h WHERE h.stream_id = s.stream_id"
            "  AND h.event = 'connected') AS first"
            f" FROM streams AS s WHERE {_LIVE_STREAMS}) AS f WHERE f.first IS NOT NULL) AS x"
        ),
        params,
    ).one()
    total = int(latency[0])
    cumulative = [(bound / 1000, int(n)) for bound, n in zip(bounds_ms, latency[2:], strict=True)]
    return ClaimStats(
        unclaimed=int(counts[0]),
        unconnected=int(counts[1]),
        connect_buckets=(*cumulative, (float("inf"), total)),
        connect_seconds=int(latency[1]) / 1000,
    )
