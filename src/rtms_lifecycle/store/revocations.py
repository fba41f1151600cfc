"""The SQL of dashboard sign-outs: ``dashboard_revocations`` (migration 0013).

A sign-out writes its session id in one :meth:`Store.transaction` (the store's time budget; on
SQLite, its one writer queue) and drops the rows whose session has expired anyway in the same
transaction, so the table holds at most the sessions signed out in the last week. Every receiver
process reads it by primary key on each dashboard request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sqlalchemy import text

if TYPE_CHECKING:
    from rtms_lifecycle.store.core import Store

__all__ = ["FORGET_EXPIRED", "revoke", "revoked"]

#: Drops the revocations of sessions that have expired anyway (parameter ``now``, epoch ms).
FORGET_EXPIRED: Final = "DELETE FROM dashboard_revocations WHERE expires_at <= :now"
# Signing out twice (two tabs) keeps the first sign-out's row.
_REVOKE: Final = text(
    "INSERT INTO dashboard_revocations (session_id, revoked_at, expires_at)"
    " VALUES (:sid, :now, :until) ON CONFLICT (session_id) DO NOTHING"
)
_FIND: Final = text(
    "SELECT 1 FROM dashboard_revocations WHERE session_id = :sid AND expires_at > :now"
)


def revoke(store: Store, session_id: str, until: int, now: int, deadline: float | None) -> None:
    """Record ``session_id`` as signed out until ``until`` (epoch ms)."""
    with store.transaction(deadline) as conn:
        conn.execute(text(FORGET_EXPIRED), {"now": now})
        if until > now:
            conn.execute(_REVOKE, {"sid": session_id, "now": now, "until": until})


def revoked(store: Store, session_id: str, now: int) -> bool:
    """Whether ``session_id`` was signed out (and has not expired since)."""
    with store.read() as conn:
        return conn.execute(_FIND, {"sid": session_id, "now": now}).first() is not None
