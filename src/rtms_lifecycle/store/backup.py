"""A consistent copy of a live SQLite database, with SQLite's online backup API.

Copying the file (``cp``) while a receiver writes misses what is still in its ``-wal``, and may
copy a page half written; the backup API copies a consistent snapshot, the log included.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from rtms_lifecycle.exceptions import DatabaseUnavailable, StoreError
from rtms_lifecycle.store.sqlite import SqliteFile, unavailable

__all__ = ["backup_sqlite"]


def backup_sqlite(source: SqliteFile, target: Path) -> int:
    """Copy ``source`` into the new file ``target``, mode 0600; its page count. ``ValueError``
    (nothing written) if ``target`` exists, is a symbolic link (even a dangling one) or its
    folder does not exist."""
    if target.is_symlink():
        raise ValueError(f"{target} is a symbolic link: a backup is written to a new file")
    if target.exists():
        raise ValueError(f"{target} exists: a backup is written to a new file")
    if not target.parent.is_dir():
        raise ValueError(f"{target.parent} is not a folder: the backup's folder must exist")
    try:
        live = source.connect()
    except sqlite3.Error as exc:
        raise DatabaseUnavailable(unavailable(source.path, exc)) from exc
    try:
        # Created here, new and owner-only whatever the umask: never through a link planted
        # at the path since the check above, never readable by others (it holds every delivery).
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        os.close(os.open(target, flags, 0o600))
    except FileExistsError as exc:
        live.close()
        raise ValueError(f"{target} exists: a backup is written to a new file") from exc
    except OSError as exc:
        live.close()
        raise ValueError(f"cannot create {target}: {exc.strerror or exc}") from exc
    try:
        copy = sqlite3.connect(target)
        try:
            live.backup(copy)
            (pages,) = copy.execute("PRAGMA page_count").fetchone()
        finally:
            copy.close()
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise StoreError(f"could not back up {source.path} into {target}: {exc}") from exc
    finally:
        live.close()
    return int(pages)
