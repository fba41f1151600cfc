"""The store's write transactions, spoken directly to the database driver.

Through SQLAlchemy every statement costs about 25 us of Python before the database sees it, more
than SQLite needs to execute it. So the write path compiles its statements once, from the tables
in ``tables``, and runs them on the DBAPI connection. SQLite gets one long-lived connection per
store (it admits one writer at a time anyway). On PostgreSQL a batch is one statement that reads
and one that writes (compare and swap on the stream rows' versions); with no transaction around
them when the batch is small, that is two round trips in all. Reads stay on SQLAlchemy.

Rows travel as plain tuples in the column orders of ``rows``. This module holds what
every database shares; ``sqlite`` and ``postgres`` one writer each, and the package
picks one (:func:`rtms_lifecycle.store.writers.writer_for`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from rtms_lifecycle.store.deadline import connecting_by, remaining
from rtms_lifecycle.store.predicates import EVENT_PREDICATE
from rtms_lifecycle.store.rows import EVENT_COLUMNS, STREAM_COLUMNS, Row

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.pool import PoolProxiedConnection

__all__ = [
    "EVENT",
    "IDENTITY_LOOKUP",
    "NEW_STREAM_COLUMNS",
    "ON_NEW_ALERT",
    "PROBE",
    "STREAM_EVENTS",
    "Loaded",
    "RollBack",
    "WriteFailed",
    "WriteTx",
    "Writer",
    "Writes",
    "check_deadline",
    "checkout",
    "insert_sql",
    "select_sql",
]


@dataclass(slots=True)
class Loaded:
    """What a batch reads before deciding: the rows it touches, and ids for what it will add."""

    streams: list[Row]
    #: ``(stream_id, kind, event_ts, delivery id)`` of the identities asked for that are stored
    stored_identities: list[Row]
    delivery_ids: Iterator[int]
    transition_ids: Iterator[int]


@dataclass(slots=True)
class Writes:
    """What a batch decided to write."""

    now: int
    deliveries: list[Row] = field(default_factory=list)
    transitions: list[Row] = field(default_factory=list)
    #: ``STREAM_COLUMNS`` then ``created_at``, ``updated_at``
    new_streams: list[Row] = field(default_factory=list)
    #: (as stored, as it is now), both in ``STREAM_COLUMNS`` order; ``updated_at`` is ``now``
    changed_streams: list[tuple[Row, Row]] = field(default_factory=list)
    alerts: list[Row] = field(default_factory=list)
    #: Streams with a duplicate that references a stored event of theirs: on PostgreSQL the
    #: write checks they still exist (a prune may have removed them since the batch read them).
    referenced: set[str] = field(default_factory=set)


class WriteTx(Protocol):
    """One write transaction."""

    def load(
        self,
        stream_ids: Sequence[str],
        identities: Sequence[Row],
        deliveries: int,
        transitions: int,
        now: int,
    ) -> Loaded:
        """Read the given streams (sorted ids) and which of these event identities are stored.

        A stream that has no row is missing from the result and the batch inserts its row.
        At most ``deliveries`` and ``transitions`` ids are taken from the iterators.
        """
        ...

    def events(self, stream_id: str) -> list[Row]:
        """Every stored event of a stream (``EVENT_COLUMNS``): a late event re-folds them."""
        ...

    def event(self, delivery_id: int) -> Row:
        """One stored event (``EVENT_COLUMNS``), by the id of its delivery."""
        ...

    def write(self, writes: Writes) -> None:
        """Write what the batch decided (the transaction commits when its block ends)."""
        ...


class WriteFailed(Exception):
    """A write transaction failed and was rolled back; ``retryable`` if it lost a race.

    ``timed_out``: it waited for the database (a lock, a slow statement) past its deadline.
    """

    def __init__(self, message: str, *, retryable: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.timed_out = timed_out


def check_deadline(deadline: float | None) -> None:
    """Raise :class:`WriteFailed` (``timed_out``) if ``deadline`` has passed."""
    if deadline is not None and remaining(deadline) <= 0:
        raise WriteFailed(
            "the time budget ran out before the write began", retryable=False, timed_out=True
        )


class Writer(Protocol):
    """Opens write transactions on one database."""

    #: How often the writer reopened its database on another file (SQLite: a deleted file
    #: restored, a deleted ``-wal`` recovered): a connection opened before writes to the old one.
    restores: int

    def transaction(
        self,
        *,
        cautious: bool = False,
        size: int = 1,
        deadline: float | None = None,
        durable: bool = True,
    ) -> AbstractContextManager[WriteTx]:
        """A context manager yielding a :class:`WriteTx`; commits on success.

        Raises :class:`WriteFailed` when the database refuses. A first attempt may be
        optimistic and lose a race (then it is retried); a ``cautious`` one locks instead.
        ``size`` is the number of deliveries the transaction will record. Past ``deadline``
        (monotonic seconds) it gives up, rolled back (``timed_out``). ``durable``: the commit
        must survive a power loss (it answers someone); else a crash of the machine may undo it.
        """
        ...

    def probe(self, deadline: float) -> None:
        """Begin a write, write a row, roll back: raises :class:`WriteFailed` if any step fails."""
        ...

    def confirm(self) -> None:
        """Raise :class:`WriteFailed` if a commit since the last check may have missed the
        database (SQLite: its file was deleted or replaced); ends a bulk load."""
        ...

    def check_file(self) -> None:
        """Raise :class:`WriteFailed` if the database (SQLite: its file) is not the one the
        writer opened, before and after a write on another connection than the writer's."""
        ...

    def refusal(self) -> str | None:
        """Why a new connection by the database's path must not be opened now (SQLite: the
        files there are no longer the ones the writer holds open); None if it may. A cheap look
        (two ``stat`` calls), without the writer's turn."""
        ...

    def close(self) -> None:
        """Give back any connection held."""
        ...


def checkout(engine: Engine, deadline: float | None = None) -> PoolProxiedConnection:
    """A DBAPI connection from the engine's pool; :class:`WriteFailed` if none can be opened
    (``timed_out`` if not by ``deadline``)."""
    # The pool hands over the driver's own error when it cannot connect.
    try:
        with connecting_by(deadline):
            return engine.raw_connection()
    except engine.dialect.loaded_dbapi.Error as exc:
        late = deadline is not None and remaining(deadline) <= 0
        raise WriteFailed(str(exc), retryable=False, timed_out=late) from exc


def insert_sql(
    table: str,
    names: Sequence[str],
    mark: str,
    *,
    computed: str = "",
    suffix: str = "",
    rows: int = 1,
) -> str:
    """An INSERT of ``rows`` rows of ``names``; ``computed`` is ``"column = SQL expression"``."""
    columns, values = list(names), [mark] * len(names)
    if computed:
        column, _, expression = computed.partition(" = ")
        columns.append(column)
        values.append(expression)
    row = f"({', '.join(values)})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}{suffix}"


def select_sql(table: str, names: Sequence[str], where: str) -> str:
    """A SELECT of ``names`` from ``table``."""
    return f"SELECT {', '.join(names)} FROM {table} WHERE {where}"


ON_NEW_ALERT: Final = " ON CONFLICT (fingerprint) DO NOTHING"
NEW_STREAM_COLUMNS: Final = (*STREAM_COLUMNS, "created_at", "updated_at")
# Each listed identity with the id of its stored event, or null: one probe of the partial unique
# index per identity. Not a join: with statistics (ANALYZE) SQLite 3.38+ plans a join of a few
# hundred identities with a Bloom filter built by scanning all deliveries (300 ms at 2 million
# rows, measured), and a row-value IN list is planned as a scan as well.
IDENTITY_LOOKUP: Final = (
    "v.s, v.k, v.t, (SELECT d.id FROM deliveries AS d"
    f" WHERE d.stream_id = v.s AND d.kind = v.k AND d.event_ts = v.t AND d.{EVENT_PREDICATE})"
)
# A stream's stored events, and one stored event, with ``%s`` markers: each dialect puts its own.
STREAM_EVENTS: Final = select_sql(
    "deliveries", EVENT_COLUMNS, f"stream_id = %s AND {EVENT_PREDICATE}"
)
EVENT: Final = select_sql("deliveries", EVENT_COLUMNS, "id = %s")
# What a health probe writes (and rolls back): a row in every table a delivery writes, as a
# delivery would (the PostgreSQL feed trigger on transitions reads subscriptions too). Ids 0
# and the empty stream id and fingerprint are never a delivery's; explicit ids take nothing
# from PostgreSQL's sequences. ``%s``: the dialect's empty blob.
PROBE: Final = (
    "INSERT INTO deliveries (id, received_at, source, outcome, raw)"
    " VALUES (0, 0, 'system', 'rejected', %s)",
    "INSERT INTO streams (stream_id, state, interruptions, resumes, failovers, fold_ts,"
    " fold_rank, created_at, updated_at) VALUES ('', 'new', 0, 0, 0, 0, 0, 0, 0)"
    " ON CONFLICT (stream_id) DO UPDATE SET updated_at = excluded.updated_at",
    "UPDATE streams SET updated_at = 0 WHERE stream_id = ''",
    "INSERT INTO transitions (id, stream_id, from_state, to_state, name, kind, event_ts,"
    " source, late, recorded_at, tx_id, delivery_id, chain_hash)"
    " VALUES (0, '', 'new', 'new', 'probe', 'probe', 0, 'system', FALSE, 0, 0, 0, '')",
    "INSERT INTO concurrency_alerts (id, event, event_ts, concurrency_number, payload,"
    " fingerprint, received_at) VALUES (0, '', 0, 0, '', '', 0)",
)


class RollBack(Exception):
    """Ends a probe's transaction: rolled back, nothing raised."""
