"""Database URLs as operators type them: a plain path is a SQLite file; what cannot work is refused.

Every refusal is a :class:`DatabaseURLError` naming what is wrong, raised before any connection
is tried, so that a typo never turns into a traceback or into a database somewhere unexpected.
"""

from __future__ import annotations

import errno
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote, urlsplit

from rtms_lifecycle.defaults import DB_ENV, DEFAULT_DB_URL
from rtms_lifecycle.exceptions import DatabaseUnavailable, DatabaseURLError
from rtms_lifecycle.store.sqlite import SqliteFile

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = [
    "DB_ENV",
    "DEFAULT_DB_URL",
    "check_driver",
    "default_url",
    "parse",
    "plain_sqlite_file",
    "refuse_memory",
    "require_existing",
    "require_existing_file",
    "shown",
    "shown_url",
    "sqlite_file",
]

_SUPPORTED: Final = ("sqlite", "postgresql")
_EXAMPLES: Final = "sqlite:///file.db, a file path, or postgresql://user@host/dbname"
# "scheme://user:secret@": what an unparseable URL's message must not show.
_PASSWORD: Final = re.compile(r"(://[^:/@]*:)[^@/]*@")
_MEMORY: Final = ("", ":memory:")


def default_url() -> str:
    """The database when none is given: ``RTMS_LIFECYCLE_DB`` if set and not empty, else the file
    ``rtms_lifecycle.db`` in the current folder."""
    return os.environ.get(DB_ENV) or DEFAULT_DB_URL


def shown(text: str) -> str:
    """The URL as it may appear in a message or a log: without its password."""
    return _PASSWORD.sub(r"\1***@", text)


def parse(text: str) -> URL:
    """A SQLAlchemy URL from a URL or from a plain file path, which means a SQLite file.

    ``postgresql://`` means psycopg 3. An unsupported database is refused here; a driver that is
    not installed only by :func:`check_driver`.
    """
    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError

    _check_text(text)
    if "://" not in text:
        # A path is taken as written: relative to the current folder, like sqlite:///path.
        return _usable_sqlite(URL.create("sqlite", database=text))
    try:
        url = make_url(text)
    except ArgumentError:
        raise DatabaseURLError(f"{shown(text)!r} is not a database URL: give {_EXAMPLES}") from None
    except ValueError as exc:
        # make_url reads the port with int(): "invalid literal for int() ... 'notaport'".
        reason = "its port is not a number" if "int()" in str(exc) else str(exc)
        raise DatabaseURLError(f"{shown(text)!r} is not a database URL: {reason}") from None
    if url.drivername in ("postgresql", "postgres"):
        # psycopg 3 is the PostgreSQL driver we ship (extra "postgres"); SQLAlchemy's default is
        # psycopg2, which users would otherwise have to install besides.
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in _SUPPORTED:
        raise DatabaseURLError(
            f"{url.get_backend_name()!r} databases are not supported: rtms-lifecycle stores in "
            "SQLite (sqlite:///file.db) or PostgreSQL (postgresql://user@host/dbname)"
        )
    # %00 decodes to a NUL, which ends libpq's connection string early: the settings after it
    # (a port, a host) would be silently dropped and another server tried.
    decoded = [url.username, url.password, url.host, url.database, *url.query.values()]
    if any("\x00" in part for part in decoded if isinstance(part, str)):
        raise DatabaseURLError(f"{shown(text)!r} contains a NUL character (%00)")
    return _usable_sqlite(url) if url.get_backend_name() == "sqlite" else url


def _check_text(text: str) -> None:
    if not text.strip():
        raise DatabaseURLError(f"the database URL is empty: give {_EXAMPLES}")
    if "\x00" in text:
        raise DatabaseURLError("the database URL contains a NUL character")
    try:
        text.encode()
    except UnicodeEncodeError:
        # Bytes that are not UTF-8 (kept by Python as lone surrogates): no driver takes them.
        raise DatabaseURLError("the database URL is not valid UTF-8 text") from None
    scheme = text.partition(":")[0].lower()
    if "://" not in text and scheme in ("sqlite", "postgresql", "postgres"):
        # "sqlite:/x" is a URL missing a slash, not a file in a folder named "sqlite:".
        raise DatabaseURLError(f"{shown(text)!r} is not a database URL: give {_EXAMPLES}")


def plain_sqlite_file(text: str) -> tuple[str, SqliteFile] | None:
    """What every user types, read without SQLAlchemy (a tenth of a second and more to import):
    a plain file path, or ``sqlite:///path`` without a query string. The URL as :func:`parse`
    renders it, and the file; None for anything else (:func:`parse` reads it, or refuses it).
    """
    _check_text(text)
    if "://" not in text:
        path = text
    elif text.startswith("sqlite:///") and "?" not in text:
        # As SQLAlchemy reads it: everything after the third slash, percent-decoded.
        path = unquote(text.removeprefix("sqlite:///"))
    else:
        return None
    if path in _MEMORY or "\x00" in path:
        return None
    _check_path(Path(path))
    # As SQLAlchemy renders it, so that messages show the same URL either way.
    return f"sqlite:///{quote(path, safe=' +/')}", SqliteFile.at(path)


def _check_path(path: Path) -> None:
    try:
        path.stat()
    except OSError as exc:
        # Other errors (no such file yet, a folder missing) are said when it is opened.
        if exc.errno == errno.ENAMETOOLONG:
            raise DatabaseURLError(
                f"the SQLite file's path is too long for the file system ({exc.strerror})"
            ) from None


def _usable_sqlite(url: URL) -> URL:
    """Refuse what SQLite could never open, before it gets there and fails in a traceback."""
    try:
        # The driver's arguments from the query: ?timeout=abc fails here, not at connect time.
        # (What SQLAlchemy warns of here, it warns of again when the engine is made.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            url.get_dialect()().create_connect_args(url)
    except (ValueError, TypeError) as exc:
        raise DatabaseURLError(
            f"{url.render_as_string()!r}: a query parameter is wrong: {exc}"
        ) from None
    path = sqlite_file(url)
    if path is not None:
        _check_path(path)
    return url


def check_driver(url: URL) -> None:
    """Refuse a URL whose database driver cannot be loaded, naming what to install."""
    from sqlalchemy.exc import ArgumentError

    try:
        url.get_dialect().import_dbapi()
    except ArgumentError:
        raise DatabaseURLError(
            f"{url.drivername!r} is not a driver SQLAlchemy knows: use sqlite:/// or postgresql://"
        ) from None
    except ImportError as exc:
        if url.get_driver_name() == "psycopg":
            hint = "install the 'postgres' extra, e.g. pip install 'rtms-lifecycle[postgres]'"
        else:
            hint = "use postgresql:// (psycopg 3, the 'postgres' extra) or install that driver"
        raise DatabaseURLError(
            f"the database driver {url.get_driver_name()!r} is not installed "
            f"(no module {exc.name!r}): {hint}"
        ) from None


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    if url.get_backend_name() != "sqlite" or (url.database or "") in _MEMORY:
        return None
    if url.query.get("mode") == "memory" or (url.database or "").startswith("file::memory:"):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (filename,), options = url.get_dialect()().create_connect_args(url)
    if options.get("uri"):
        # An SQLite URI (uri=true, e.g. sqlite:///file:rtms.db?mode=ro&uri=true): the file is
        # the URI's path, percent-decoded, as SQLite reads it.
        return Path(unquote(urlsplit(filename).path))
    return Path(url.database or "")


def refuse_memory(url: URL) -> None:
    """A command's in-memory SQLite database would vanish with the command: refuse it."""
    if url.get_backend_name() == "sqlite" and sqlite_file(url) is None:
        raise DatabaseURLError(
            f"{url.render_as_string()} is an in-memory database: everything recorded would be lost "
            "when the command ends; give a file (sqlite:///rtms_lifecycle.db or a path)"
        )


def require_existing_file(url: URL) -> None:
    """Reading never creates a database: a SQLite file that is not there is an error."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise DatabaseUnavailable(
            f"no database at {path}: the SQLite file does not exist (reading never creates "
            "one: check the path, or record deliveries first with ingest or serve)"
        )


def require_existing(text: str) -> None:
    """:func:`require_existing_file` for a URL as text (one :func:`parse` accepted)."""
    from sqlalchemy.engine import make_url

    require_existing_file(make_url(text))


def shown_url(text: str) -> str:
    """A URL :func:`parse` accepted, rendered without its password; anything else as given."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(text).render_as_string(hide_password=True)
    except ArgumentError:
        return text
