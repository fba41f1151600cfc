"""Whether the files at an SQLite database's paths are still the ones its connection opened.

SQLite opens the database file and its ``-wal`` once, by name, and then uses what it opened:
moved, deleted or replaced, the files at the paths are no longer the connection's, and a commit
through it is in a file nobody will open again. ``os.fstat`` of what the connection holds is
out of reach through ``sqlite3``, so the identity (device and inode) of each path is recorded
when the connection opens (or when its WAL first appears) and compared with the paths' now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

__all__ = ["Change", "FileWatch", "identity"]

Identity = tuple[int, int]


def identity(path: str) -> Identity | None:
    """Device and inode of the file at ``path``; None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_dev, found.st_ino)


class Change(Enum):
    """What changed at the paths since the connection opened."""

    #: the database file is gone from its path (deleted or moved away)
    GONE = "gone"
    #: another file is at the database's path
    REPLACED = "replaced"
    #: the database file is the one opened, its ``-wal`` is gone
    WAL_GONE = "wal gone"
    #: another file is at the ``-wal``'s path
    WAL_REPLACED = "wal replaced"


@dataclass(slots=True)
class FileWatch:
    """The identities of one database file and its ``-wal``, as its connection opened them."""

    path: str
    database: Identity | None = None
    wal: Identity | None = None

    @property
    def wal_path(self) -> str:
        return self.path + "-wal"

    def opened(self) -> None:
        """Record the files at the paths: a connection was just opened to them."""
        self.database = identity(self.path)
        self.wal = identity(self.wal_path)

    def change(self) -> Change | None:
        """What is no longer the connection's at the paths; None if nothing."""
        now = identity(self.path)
        if now != self.database:
            return Change.GONE if now is None else Change.REPLACED
        wal = identity(self.wal_path)
        if self.wal is None:
            # Not there when the connection opened: the first commit makes it, the connection's.
            self.wal = wal
            return None
        if wal != self.wal:
            return Change.WAL_GONE if wal is None else Change.WAL_REPLACED
        return None

    def wal_is_safe_to_delete(self) -> bool:
        """Whether closing the connection may delete the ``-wal`` path (SQLite does, by name,
        when the last connection closes): it names the connection's own WAL, or nothing."""
        return identity(self.wal_path) in (None, self.wal)

    def describe(self, change: Change) -> str:
        """The change in words, for the 503s, /healthz and the CLI."""
        path = self.path
        match change:
            case Change.GONE:
                what = f"the database file {path} was moved away or deleted while open"
            case Change.REPLACED:
                what = f"the database file {path} was replaced by another file while open"
            case Change.WAL_GONE:
                what = f"the write-ahead log {path}-wal was deleted while open"
            case Change.WAL_REPLACED:
                what = f"the write-ahead log {path}-wal was replaced by another file while open"
        return (
            f"{what}: writes are refused until the original is back at its path (or the "
            "receiver is restarted on the file now there; see docs/operations.md, Backup, "
            "restore and moving the database)"
        )
