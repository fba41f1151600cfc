"""How much room the database takes, and how much its disk has left: read at every scrape.

SQLite: ``os.stat`` of the paths the store opened and ``os.statvfs`` of their folder, no file
opened (a few microseconds). PostgreSQL: ``pg_database_size(current_database())``, which any
role allowed to connect may run; the server's disk is not this host's to see.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rtms_lifecycle.records import DatabaseCapacity

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["UNKNOWN", "postgres_capacity", "sqlite_capacity"]

#: Nothing known (an SQLite database in memory, another dialect).
UNKNOWN = DatabaseCapacity(None, None, None, None)


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def sqlite_capacity(path: Path) -> DatabaseCapacity:
    """The sizes of the file at ``path`` and of its ``-wal`` (0 beside a database without one,
    unknown when the database is not at its path), and its folder's file system."""
    database = _size(str(path))
    wal = _size(f"{path}-wal")
    if wal is None and database is not None:
        wal = 0
    try:
        disk = os.statvfs(path.parent)
    except OSError:
        return DatabaseCapacity(database, wal, None, None)
    # f_bavail: what an unprivileged writer may still use (the root reserve left out).
    return DatabaseCapacity(
        database, wal, disk.f_bavail * disk.f_frsize, disk.f_blocks * disk.f_frsize
    )


def postgres_capacity(conn: Connection) -> DatabaseCapacity:
    """The database's size as PostgreSQL counts it (every relation's files, on the server)."""
    size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
    return DatabaseCapacity(int(size), None, None, None)
