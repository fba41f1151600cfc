"""Alembic environment: runs on the connection rtms_lifecycle hands over, or on a URL."""

from __future__ import annotations

import warnings

from alembic import context
from sqlalchemy import Connection, Engine, create_engine

from rtms_lifecycle.store.tables import POSTGRESQL_FEED_INDEX, metadata


def _run(connection: Connection) -> None:
    dialect = connection.dialect.name

    def include(_obj: object, name: str | None, type_: str, *_: object) -> bool:
        # Comparing the tables with a migrated database: SQLite lacks this index by design.
        return not (type_ == "index" and name == POSTGRESQL_FEED_INDEX and dialect != "postgresql")

    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=dialect == "sqlite",
        compare_type=True,
        include_object=include,
    )
    with context.begin_transaction(), warnings.catch_warnings():
        # SQLite's reflection skips expression indexes (ix_streams_stop_duration) when
        # autogenerate compares: the packaged-schema test checks that index instead.
        for message in (
            "Skipped unsupported reflection of expression-based index",
            "autogenerate skipping metadata-specified expression-based index",
        ):
            warnings.filterwarnings("ignore", message)
        context.run_migrations()


def _online() -> None:
    # The library hands over a Connection; pytest-alembic an Engine; alembic's CLI only a URL.
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    engine = given if isinstance(given, Engine) else None
    if engine is None:
        url = context.config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("no database: set sqlalchemy.url or pass a connection")
        engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    _online()
