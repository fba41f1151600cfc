"""The store's write transactions, one module per database: ``base`` (what they share),
``sqlite`` and ``postgres``."""

from rtms_lifecycle.store.writers.base import (
    Loaded,
    WriteFailed,
    Writer,
    Writes,
    WriteTx,
    writer_for,
)

__all__ = ["Loaded", "WriteFailed", "WriteTx", "Writer", "Writes", "writer_for"]
