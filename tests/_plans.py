"""SQLite's plans for what a call runs: the query tests and the query benchmark read them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from rtms_lifecycle import Tracker


def query_plan(tracker: Tracker, call: Callable[[], Any]) -> list[str]:
    """EXPLAIN QUERY PLAN of each SELECT ``call`` runs through the tracker's (SQLite) engine."""
    seen: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, params))

    event.listen(tracker.engine, "before_cursor_execute", listen)
    try:
        call()
    finally:
        event.remove(tracker.engine, "before_cursor_execute", listen)
    plans = []
    with tracker.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        for statement, params in seen:
            rows = raw.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
            plans.append("; ".join(str(row[-1]) for row in rows))
    return plans
