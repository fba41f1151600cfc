"""The store's write transactions, one module per database: ``base`` (what they share),
``sqlite`` and ``postgres``; :func:`writer_for` picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rtms_lifecycle.store.writers.base import Loaded, WriteFailed, Writer, Writes, WriteTx

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["Loaded", "WriteFailed", "WriteTx", "Writer", "Writes", "writer_for"]


def writer_for(engine: Engine) -> Writer:
    """The writer for this engine's database."""
    # Each database's module is imported by the first store that writes to one.
    if engine.dialect.name == "postgresql":
        from rtms_lifecycle.store.writers.postgres import PostgresWriter

        return PostgresWriter(engine)
    if engine.dialect.name == "sqlite":
        from rtms_lifecycle.store.writers.sqlite import SqliteWriter

        return SqliteWriter.of_engine(engine)
    raise ValueError(f"unsupported database: {engine.dialect.name}")
