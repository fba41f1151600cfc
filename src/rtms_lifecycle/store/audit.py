"""Audit verification: every chain recomputed from its rows, and the digest of all chain heads.

A digest is a token ``N.X.P.HEX``: the chains as they were when it was taken, at a position the
rows themselves say (transitions with ``id <= N`` and ``tx_id < X``, pruned-chain records with
``id <= P``), so that later rows do not change it and a later check recomputes it exactly. On
PostgreSQL ``X`` is the oldest transaction still running then (every one below it had ended); on
SQLite every ``tx_id`` is 0 and ``X`` is 1. The chain encoding is ``chain``'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, text

from rtms_lifecycle.records import AuditBreak, AuditReport
from rtms_lifecycle.store.chain import HASHED_COLUMNS, chain_hash, digest, head_entry
from rtms_lifecycle.store.core import Store

__all__ = ["Position", "parse_head", "verify"]

# Streams per read: their transitions are read in one statement, in chain order.
_STREAMS_PER_READ: Final = 2000
_HASHED: Final = len(HASHED_COLUMNS)
_TO_STATE: Final = HASHED_COLUMNS.index("to_state")
_ROWS: Final = (
    f"SELECT {', '.join(HASHED_COLUMNS)}, tx_id, chain_hash FROM transitions"
    " WHERE stream_id >= :first AND stream_id <= :last ORDER BY stream_id, id"
)
_HEADS: Final = (
    "SELECT stream_id, chain_head, state FROM streams"
    " WHERE stream_id >= :first AND stream_id <= :last"
)
_HEADLESS: Final = (
    "SELECT stream_id, chain_head FROM streams WHERE chain_head IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM transitions WHERE transitions.stream_id = streams.stream_id)"
)
_PRUNED: Final = (
    "SELECT id, stream_id, first_id, last_id, last_tx_id, head FROM pruned_chains ORDER BY id"
)
_HEAD_TOKEN: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)\.([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a digest stands: transitions ``id <= last`` with ``tx_id < below``, pruned-chain
    records ``id <= pruned``."""

    last: int
    below: int
    pruned: int

    def holds(self, transition_id: int, tx_id: int) -> bool:
        return transition_id <= self.last and tx_id < self.below

    def token(self, hex_digest: str) -> str:
        return f"{self.last}.{self.below}.{self.pruned}.{hex_digest}"


def parse_head(token: str) -> tuple[Position, str]:
    """A digest as ``audit head`` printed it; :class:`ValueError` naming what is wrong."""
    found = _HEAD_TOKEN.fullmatch(token.strip())
    if found is None:
        raise ValueError(
            "head must be a digest as `rtms-lifecycle audit head` prints it (N.X.P.HEX)"
        )
    last, below, pruned, hex_digest = found.groups()
    return Position(int(last), int(below), int(pruned)), hex_digest


@dataclass(slots=True)
class _Walk:
    """One pass over the chains: the breaks found, and the heads at each position asked for."""

    positions: Sequence[Position]
    breaks: list[AuditBreak] = field(default_factory=list)
    entries: list[list[bytes]] = field(default_factory=list)
    streams: int = 0
    transitions: int = 0

    def chain(self, stream_id: str, rows: Sequence[Sequence[Any]], stored: Any) -> None:
        """Recompute one stream's chain (rows in id order) and compare it with what is stored:
        ``stored`` is the stream row's ``(chain_head, state)``, or ``_MISSING``."""
        self.streams += 1
        self.transitions += len(rows)
        broken = False
        previous: str | None = None
        at: list[str | None] = [None] * len(self.positions)  # the head at each position
        for row in rows:
            previous = chain_hash(previous, row[:_HASHED])
            if not broken and row[-1] != previous:
                broken = True
                self.breaks.append(
                    AuditBreak(
                        stream_id, row[0], "the stored hash is not the row's", previous, row[-1]
                    )
                )
            for i, position in enumerate(self.positions):
                if position.holds(row[0], row[-2]):
                    at[i] = previous
        for i, head in enumerate(at):
            if head is not None:
                self.entries[i].append(head_entry("live", stream_id, head))
        if broken:
            return
        if stored is _MISSING:
            self.breaks.append(
                AuditBreak(stream_id, rows[-1][0], "the stream's row is missing", previous)
            )
            return
        stored_head, state = stored
        if stored_head != previous:
            self.breaks.append(
                AuditBreak(
                    stream_id,
                    rows[-1][0],
                    "the stream's head is not its last row's hash",
                    previous,
                    stored_head,
                )
            )
        elif state != rows[-1][_TO_STATE]:
            # Every write that moves a stream records the move: its state is its last row's.
            self.breaks.append(
                AuditBreak(
                    stream_id,
                    rows[-1][0],
                    "the stream's state is not its last row's",
                    rows[-1][_TO_STATE],
                    state,
                )
            )


_MISSING: Final = object()


def _pages(conn: Connection, stream_id: str | None) -> Iterator[list[str]]:
    if stream_id is not None:
        yield [stream_id]
        return
    after: str | None = None
    while True:
        where = "" if after is None else " WHERE stream_id > :after"
        ids = list(
            conn.execute(
                text(
                    f"SELECT DISTINCT stream_id FROM transitions{where} ORDER BY stream_id LIMIT :n"
                ),
                {"after": after, "n": _STREAMS_PER_READ},
            ).scalars()
        )
        if not ids:
            return
        yield ids
        after = ids[-1]


def _position(conn: Connection, postgres: bool) -> Position:
    below = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint" if postgres else "1"
    last, below_value, pruned = conn.execute(
        text(
            "SELECT (SELECT max(id) FROM transitions), "
            f"{below}, (SELECT max(id) FROM pruned_chains)"
        )
    ).one()
    return Position(last or 0, int(below_value), pruned or 0)


def verify(store: Store, stream_id: str | None = None, head: str | None = None) -> AuditReport:
    """Recompute every chain (or one stream's), compare, and (with ``head``) check a digest."""
    given = parse_head(head) if head is not None else None
    postgres = store.dialect == "postgresql"
    with store.read() as conn:
        if postgres:
            # One snapshot for the whole walk, as the position read at its start.
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        now = _position(conn, postgres)
        positions = [now] if given is None else [now, given[0]]
        walk = _Walk(positions, entries=[[] for _ in positions])
        for ids in _pages(conn, stream_id):
            bounds = {"first": ids[0], "last": ids[-1]}
            heads: dict[str, Any] = {
                sid: (head, state) for sid, head, state in conn.execute(text(_HEADS), bounds)
            }
            chain: list[Sequence[Any]] = []
            for row in conn.execute(text(_ROWS), bounds):
                if chain and chain[0][1] != row[1]:
                    walk.chain(chain[0][1], chain, heads.get(chain[0][1], _MISSING))
                    chain = []
                chain.append(row)
            if chain:
                walk.chain(chain[0][1], chain, heads.get(chain[0][1], _MISSING))
        headless = conn.execute(text(_HEADLESS)).all()
        pruned = conn.execute(text(_PRUNED)).all()
    for sid, stored in headless:
        if stream_id is None or sid == stream_id:
            walk.breaks.append(
                AuditBreak(sid, None, "the stream's head names rows that are missing", None, stored)
            )
    unverifiable: list[str] = []
    for record_id, sid, first_id, last_id, last_tx_id, chain_head in pruned:
        for i, position in enumerate(positions):
            if record_id <= position.pruned:
                walk.entries[i].append(head_entry("pruned", sid, chain_head or ""))
            elif position.holds(last_id, last_tx_id):
                # Pruned since: then it was a live chain, with the head it was pruned with.
                walk.entries[i].append(head_entry("live", sid, chain_head or ""))
            elif i == 1 and first_id <= position.last:
                # Some of its rows were there: what their head was is gone with them.
                unverifiable.append(sid)
    matches = None
    if given is not None:
        matches = digest(walk.entries[1]) == given[1]
        if not matches and unverifiable:
            matches = None  # what the pruned rows held is gone: neither confirmed nor refuted
    return AuditReport(
        streams=walk.streams,
        transitions=walk.transitions,
        pruned_chains=len(pruned),
        head=now.token(digest(walk.entries[0])),
        breaks=tuple(walk.breaks),
        head_matches=matches,
        unverifiable=tuple(unverifiable),
    )
