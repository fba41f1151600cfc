"""Saving an SQLite database file deleted while open, from the connection that still holds it.

After ``rm`` the only copy of the database is the deleted file the process holds open (and its
``-wal``). :func:`save_copy` takes a consistent copy of it through that connection (SQLite's
backup: the log's content included) under a temporary name beside the path, synced; then it is
either put at the path, never over a file there (:func:`put_at`), or kept beside it under a name
of its own (:func:`keep_recovered`). Nothing here overwrites or deletes a file it did not make.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sqlite3
import stat
import tempfile
import time
from pathlib import Path

__all__ = ["RECOVERED", "keep_recovered", "put_at", "recovered_beside", "save_copy"]

#: What a kept copy's name adds to the database's path, before its UTC time.
RECOVERED = ".recovered-"


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_copy(conn: sqlite3.Connection, path: str, mode: int) -> str:
    """Copy the database ``conn`` holds to a new file beside ``path`` (permissions ``mode``),
    synced with its folder; returns its name. Raises ``OSError`` or ``sqlite3.Error``, leaving
    nothing behind."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.saving-", dir=folder)
    try:
        os.fchmod(fd, stat.S_IMODE(mode))
        os.close(fd)
        fd = -1
        copy = sqlite3.connect(temporary)
        try:
            conn.backup(copy)
        finally:
            copy.close()
        fd = os.open(temporary, os.O_RDONLY)
        os.fsync(fd)
        _sync_folder(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return temporary


def put_at(temporary: str, path: str) -> bool:
    """Give the copy ``temporary`` the name ``path`` unless a file is there (False, nothing
    done); the temporary name is removed."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    os.unlink(temporary)
    _sync_folder(os.path.dirname(os.path.abspath(path)))
    return True


def keep_recovered(temporary: str, path: str) -> str:
    """Keep the copy ``temporary`` as ``<path>.recovered-<UTC time>`` (a new name, never over
    a file); returns that name."""
    stem = f"{path}{RECOVERED}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    name, n = stem, 1
    while True:
        try:
            os.link(temporary, name)
            break
        except FileExistsError:
            n += 1
            name = f"{stem}-{n}"
    os.unlink(temporary)
    _sync_folder(os.path.dirname(os.path.abspath(path)))
    return name


def recovered_beside(path: Path) -> list[str]:
    """The copies kept beside ``path`` by :func:`keep_recovered`, oldest first."""
    return sorted(glob.glob(glob.escape(str(path)) + RECOVERED + "*"))
