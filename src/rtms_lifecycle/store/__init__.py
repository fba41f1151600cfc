"""The only place that speaks SQL: connections, schema, queries, and the write path.

Nothing is imported here, so that reaching one module (the database URL parser, say) does not
import SQLAlchemy; :class:`~rtms_lifecycle.store.core.Store` is the write and read facade.
"""
