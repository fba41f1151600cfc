"""Whether the files at an SQLite database's paths are still the ones its connection opened.

SQLite opens the database file and its ``-wal`` once, by name, and then uses what it opened:
moved, deleted or replaced, the files at the paths are no longer the connection's, and a commit
through it is in a file nobody will open again. ``os.fstat`` of what the connection holds is
out of reach through ``sqlite3``, so the identity (device and inode) of each path is recorded
when the connection opens (or when its WAL first appears) and compared with the paths' now.
Whether a database file gone from its path was deleted (no name left) or moved (``mv`` keeps
one) is told by the file descriptors the process holds: the one with the recorded identity.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

__all__ = ["Change", "FileWatch", "identity", "opened_file"]

Identity = tuple[int, int]

# Where a process lists its open file descriptors (Linux; macOS and the BSDs).
_DESCRIPTORS: Final = ("/proc/self/fd", "/dev/fd")


def identity(path: str) -> Identity | None:
    """Device and inode of the file at ``path``; None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return (found.st_dev, found.st_ino)


def opened_file(wanted: Identity, hint: int | None = None) -> tuple[int, os.stat_result] | None:
    """A descriptor this process holds on the file ``wanted`` (``hint`` first), and its status
    (``st_nlink`` 0: deleted); None if none is found."""
    if hint is not None:
        found = _status(hint)
        if found is not None and (found.st_dev, found.st_ino) == wanted:
            return hint, found
    for folder in _DESCRIPTORS:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if not name.isdigit():
                continue
            found = _status(int(name))
            if found is not None and (found.st_dev, found.st_ino) == wanted:
                return int(name), found
        return None
    return None


def _status(fd: int) -> os.stat_result | None:
    try:
        return os.fstat(fd)
    except OSError:  # closed since it was listed (the listing's own descriptor, another thread's)
        return None


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
    #: where a copy of the deleted database file was kept, the path being taken
    recovered: str | None = None
    #: why the last copy of the deleted database file could not be written (None: no failure)
    save_failed: str | None = None
    # The descriptor the database file was last found at.
    _fd: int | None = field(default=None, repr=False)

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

    def deleted(self) -> os.stat_result | None:
        """The status of the database file the connection opened if it was deleted (no name
        left; a moved file keeps one), else None."""
        if self.database is None:
            return None
        held = opened_file(self.database, self._fd)
        if held is None:
            return None
        self._fd, status = held
        return status if status.st_nlink == 0 else None

    def remove_logs(self) -> None:
        """Delete the ``-wal`` and ``-shm`` at the paths, left by SQLite when a connection to a
        deleted database file closes (it leaves them to a file it may no longer name): a new
        database at the path would take them for its own. Only once the connection is closed,
        its content saved, and :meth:`wal_is_safe_to_delete`."""
        for name in (self.wal_path, self.path + "-shm"):
            # A read-only folder keeps them: the refusal of an orphaned log names them.
            with contextlib.suppress(OSError):
                os.unlink(name)

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
        if self.save_failed is not None and change in (Change.GONE, Change.REPLACED):
            folder = os.path.dirname(os.path.abspath(path))
            return (
                f"the database file {path} was deleted while open, and the copy of it from the "
                f"open connection could not be written ({self.save_failed}): do NOT restart or "
                "stop this receiver, its open connection holds the only copy of every delivery "
                f"recorded; make room on the disk, or make the folder {folder} writable: the "
                "copy is tried again every 5 s, and put back at the path"
            )
        if self.recovered is not None and change in (Change.GONE, Change.REPLACED):
            return (
                f"the database file {path} was deleted while open, and another file is at its "
                f"path (or at its -wal's): every delivery this process recorded was saved to "
                f"{self.recovered}; writes are refused. The file at {path} may be the same "
                "database put back by another process that had it open (a receiver, a prune), "
                f"holding later deliveries: compare it with {self.recovered} (e.g. "
                "rtms-lifecycle stats on each) before replacing anything. Only if it is not "
                f"that database: Stop the receivers, put {self.recovered} at {path}, and start "
                "them (see docs/operations.md, Backup, restore and moving the database)"
            )
        return (
            f"{what}: writes are refused until the original is back at its path (or the "
            "receiver is restarted on the file now there; see docs/operations.md, Backup, "
            "restore and moving the database)"
        )
