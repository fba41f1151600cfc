"""The SQL schema (SQLAlchemy Core). Migrations in ``migrations/`` must match it: a test checks."""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from rtms_lifecycle.events import MAX_ID_LENGTH
from rtms_lifecycle.store.predicates import (
    EVENT_PREDICATE,
    NOT_EVENT_PREDICATE,
    UNAPPLIED_PREDICATE,
)

# Named constraints make migrations reproducible across SQLite (batch mode) and PostgreSQL.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for ids that grow.
_Id = BigInteger().with_variant(Integer(), "sqlite")
# A stop code is any 64-bit integer (migration 0019); SQLite's INTEGER already holds 64 bits.
_StopCode = BigInteger().with_variant(Integer(), "sqlite")
_ID_LENGTH: Final = MAX_ID_LENGTH
_CONSUMER_LENGTH: Final = 200

# Live rows are a small, hot part of a huge table: a partial index keeps them one seek away.
# Queries must repeat this exact predicate for SQLite's planner to use the index.
LIVE_PREDICATE: Final = "state != 'stopped'"
LIVE_INDEX_COLUMNS: Final = (
    "state",
    "scope",
    "scope_id",
    "stream_id",
    "account_id",
    "session_key",
    "operator_id",
    "server_urls",
    "started_at",
    "stopped_at",
    "last_event_at",
    "stop_reason",
    "interruptions",
    "resumes",
    "failovers",
    "stop_source",
)

streams = Table(
    "streams",
    metadata,
    Column("stream_id", String(_ID_LENGTH), primary_key=True),
    # Null only while the stream is "new": an app-reported resume can arrive before any webhook.
    Column("scope", String(32)),
    Column("scope_id", String(_ID_LENGTH)),
    Column("account_id", String(_ID_LENGTH)),
    Column("session_key", String(_ID_LENGTH)),
    Column("operator_id", String(_ID_LENGTH)),
    Column("server_urls", Text),
    Column("state", String(16), nullable=False),
    Column("first_event_at", BigInteger),
    Column("started_at", BigInteger),
    Column("stopped_at", BigInteger),
    Column("stop_reason", _StopCode),
    Column("last_event_at", BigInteger),
    Column("interruptions", Integer, nullable=False),
    Column("resumes", Integer, nullable=False),
    Column("failovers", Integer, nullable=False),
    Column("fold_ts", BigInteger, nullable=False),
    Column("fold_rank", SmallInteger, nullable=False),
    # The source of the applied stop: a webhook's stop without a reason is not an expiry.
    Column("stop_source", String(16)),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    # The hash of the stream's last transition (``store/chain.py``): null before the first.
    Column("chain_head", String(64)),
    # Covering: every column of a Stream, so live queries never visit the (huge) table.
    Index(
        "ix_streams_live",
        *LIVE_INDEX_COLUMNS,
        sqlite_where=text(LIVE_PREDICATE),
        postgresql_where=text(LIVE_PREDICATE),
    ),
    Index("ix_streams_scope_scope_id", "scope", "scope_id"),
    # Covers stop-reason statistics: a month of stops is read from the index alone.
    Index(
        "ix_streams_stopped_at",
        "stopped_at",
        "stop_reason",
        "started_at",
        "scope",
        "stop_source",
        sqlite_where=text("stopped_at IS NOT NULL"),
        postgresql_where=text("stopped_at IS NOT NULL"),
    ),
    Index("ix_streams_first_event_at", "first_event_at"),
)

# The median duration of a group of stops (stop_reason_stats) is found in this order, inside
# the one duration bucket of ``stop_reason_rollup`` that holds it.
Index(
    "ix_streams_stop_duration",
    streams.c.stop_reason,
    streams.c.stopped_at - streams.c.started_at,
    streams.c.scope,
    streams.c.stopped_at,
    streams.c.stop_source,
    sqlite_where=text("stopped_at IS NOT NULL"),
    postgresql_where=text("stopped_at IS NOT NULL"),
)

# Stops per UTC day of stopped_at, scope, kind (0 a reason code, 1 a webhook's stop without
# one, 2 an expiry), reason (0 without one) and duration bucket: kept by triggers on streams
# (migration 0014, ``store/rollup.py``), so it counts exactly what streams holds.
stop_reason_rollup = Table(
    "stop_reason_rollup",
    metadata,
    Column("day", BigInteger, primary_key=True),
    Column("scope", String(32), primary_key=True),
    Column("kind", SmallInteger, primary_key=True),
    Column("stop_reason", _StopCode, primary_key=True),
    Column("bucket", SmallInteger, primary_key=True),
    Column("count", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("received_at", BigInteger, nullable=False),
    Column("source", String(16), nullable=False),
    Column("event", Text),
    Column("event_ts", BigInteger),
    Column("stream_id", String(_ID_LENGTH)),
    Column("kind", String(16)),
    Column("outcome", String(16), nullable=False),
    # JSON list of {"field", "reason"}; set only for rejected deliveries.
    Column("error", Text),
    # Why a delivery was a duplicate, a conflict or ignored, in words.
    Column("detail", Text),
    # Empty when ``same_as`` is set: a retry byte-identical to a stored event keeps no second copy.
    Column("raw", LargeBinary, nullable=False),
    # When the request was signed (epoch ms of x-zm-request-timestamp) and the label of the
    # configured secret that verified it: null unless the receiver verified the delivery.
    Column("signed_at", BigInteger),
    Column("secret_label", String(64)),
    # The event delivery (of the same stream) whose bytes this duplicate repeats.
    Column("same_as", BigInteger),
    # A reprocessed delivery: the id of the delivery an earlier version refused, whose bytes
    # these are (``Tracker.reprocess``); that row stays as it was.
    Column("reprocess_of", BigInteger),
    # Partial indexes: a random-keyed index entry per delivery was most of a bulk load's cost.
    Index(
        "ix_deliveries_unapplied",
        "outcome",
        "id",
        sqlite_where=text(UNAPPLIED_PREDICATE),
        postgresql_where=text(UNAPPLIED_PREDICATE),
    ),
    Index(
        "ix_deliveries_stream_other",
        "stream_id",
        "id",
        sqlite_where=text(NOT_EVENT_PREDICATE),
        postgresql_where=text(NOT_EVENT_PREDICATE),
    ),
    # Which refused deliveries were reprocessed already: a second run finds them here.
    Index(
        "ix_deliveries_reprocess_of",
        "reprocess_of",
        sqlite_where=text("reprocess_of IS NOT NULL"),
        postgresql_where=text("reprocess_of IS NOT NULL"),
    ),
    # A stream's events are the deliveries that brought each one first (docs/concepts.md): their
    # identity is unique, kept so by the database, not the code. Re-folds parse their raw bytes.
    Index(
        "uq_deliveries_event",
        "stream_id",
        "kind",
        "event_ts",
        unique=True,
        sqlite_where=text(EVENT_PREDICATE),
        postgresql_where=text(EVENT_PREDICATE),
    ),
)

# Append-only: no code path updates a row of it; only a prune deletes the rows of streams it
# removed, and the database refuses every other update or delete (migrations 0002 and 0006).
#: The feed's order on PostgreSQL, the one index only one database has: SQLite reads the feed in
#: rowid order (its tx_id is always 0).
POSTGRESQL_FEED_INDEX: Final = "ix_transitions_tx_id_id"

transitions = Table(
    "transitions",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("stream_id", String(_ID_LENGTH), nullable=False),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("name", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("event_ts", BigInteger, nullable=False),
    Column("source", String(16), nullable=False),
    Column("late", Boolean, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    # PostgreSQL transaction id of the writer: ids are not commit-ordered, transaction ids below
    # every running transaction are, which is what the durable feed's cursor rests on.
    Column("tx_id", BigInteger, nullable=False),
    Column("delivery_id", BigInteger),
    # SHA-256 over the row and its stream's previous row's hash (``store/chain.py``).
    Column("chain_hash", String(64)),
    Index("ix_transitions_stream_id_event_ts", "stream_id", "event_ts"),
    Index(POSTGRESQL_FEED_INDEX, "tx_id", "id").ddl_if(dialect="postgresql"),
)

concurrency_alerts = Table(
    "concurrency_alerts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("event", String(64), nullable=False),
    Column("event_ts", BigInteger, nullable=False),
    Column("concurrency_number", Integer, nullable=False),
    Column("concurrency_limit", Integer),
    Column("percentage", Integer),
    Column("operator_id", String(_ID_LENGTH)),
    Column("id_field", String(32)),
    Column("id_value", String(_ID_LENGTH)),
    Column("account_id", String(_ID_LENGTH)),
    Column("payload", Text, nullable=False),
    # sha256 of event, event_ts and payload: a retried alert is stored once.
    Column("fingerprint", String(64), nullable=False),
    Column("received_at", BigInteger, nullable=False),
    UniqueConstraint("fingerprint"),
    Index("ix_concurrency_alerts_event_ts", "event_ts"),
)

# Durable subscriptions: one row per named consumer. Its cursor is a feed position (tx, id); the
# lease says which process delivers for it now; attempts and retry_at belong to the first
# transition after the cursor that the consumer wants (the head), while it keeps failing.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("consumer", String(_CONSUMER_LENGTH), primary_key=True),
    Column("cursor_tx", BigInteger, nullable=False),
    Column("cursor_id", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("retry_at", BigInteger),
    Column("last_error", Text),
    Column("last_error_at", BigInteger),
    Column("lease_owner", String(_CONSUMER_LENGTH)),
    Column("lease_until", BigInteger),
    Column("delivered", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Transitions a consumer's callback kept failing on, set aside so that later ones flow. A retry
# re-queues them (``queued``); delivered, they are deleted; failing again, they are parked again.
subscription_parked = Table(
    "subscription_parked",
    metadata,
    Column("consumer", String(_CONSUMER_LENGTH), primary_key=True),
    Column("transition_id", BigInteger, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("retry_at", BigInteger),
    Column("error", Text),
    Column("parked_at", BigInteger, nullable=False),
    Column("queued", Boolean, nullable=False),
)

# Append-only: one row per prune transaction, so that every row a prune removed is accounted for
# by a committed record, even when the prune is interrupted; ``run`` groups a prune's rows.
prunes = Table(
    "prunes",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run", String(32), nullable=False),
    Column("pruned_at", BigInteger, nullable=False),
    Column("cutoff", BigInteger, nullable=False),
    Column("streams", Integer, nullable=False),
    Column("deliveries", Integer, nullable=False),
    Column("transitions", Integer, nullable=False),
    Column("alerts", Integer, nullable=False),
    Index("ix_prunes_run", "run"),
)

#: A claim not ended (held, or expired and nobody said so); queries must repeat it verbatim.
HELD_CLAIM_PREDICATE: Final = "ended_at IS NULL"

# A stream's newest claim: kept after it ends, so that the next claim's token is greater. A
# stop ends it in the transaction that records the stop (a trigger on streams, migration 0010).
stream_claims = Table(
    "stream_claims",
    metadata,
    Column("stream_id", String(_ID_LENGTH), primary_key=True),
    Column("token", BigInteger, nullable=False),
    Column("worker", String(_CONSUMER_LENGTH), nullable=False),
    Column("claimed_at", BigInteger, nullable=False),
    Column("renewed_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger),
    Column("end_reason", String(32)),
    Column("connected", Boolean, nullable=False),
    Column("connected_at", BigInteger),
    Column("disconnected_at", BigInteger),
    # Held or expired claims, by expiry: an expired lease is claimable (migration 0015).
    Index(
        "ix_stream_claims_expires_at",
        "expires_at",
        sqlite_where=text(HELD_CLAIM_PREDICATE),
        postgresql_where=text(HELD_CLAIM_PREDICATE),
    ),
)

# The live streams nobody holds and no lease covers, in the order workers take them: a claim
# reads the first row whose stream it can lock, however many streams are held. Kept by triggers
# on streams (a start adds the row, a stop removes it), a claim (removes it) and a release (adds
# it back), each in its own transaction (migration 0015). A held stream whose lease ran out is
# found through ix_stream_claims_expires_at instead.
claim_queue = Table(
    "claim_queue",
    metadata,
    Column("stream_id", String(_ID_LENGTH), primary_key=True),
    Column("started_at", BigInteger),
    Index("ix_claim_queue_started_at_stream_id", "started_at", "stream_id"),
)

# Append-only, as transitions: claims, late renewals, releases, expiries seen, stops, and what
# the worker reported (connected, disconnected).
claim_history = Table(
    "claim_history",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("stream_id", String(_ID_LENGTH), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("worker", String(_CONSUMER_LENGTH), nullable=False),
    Column("event", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("recorded_at", BigInteger, nullable=False),
    Column("reason", Text),
    Index("ix_claim_history_stream_id_id", "stream_id", "id"),
)

# Append-only: one row per chain (a stream's transitions) a prune removed, with its head, so
# that the global digest of the chains still verifies after a prune (migration 0011).
pruned_chains = Table(
    "pruned_chains",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run", String(32), nullable=False),
    Column("pruned_at", BigInteger, nullable=False),
    Column("stream_id", String(_ID_LENGTH), nullable=False),
    Column("transitions", Integer, nullable=False),
    Column("first_id", BigInteger, nullable=False),
    Column("last_id", BigInteger, nullable=False),
    Column("last_tx_id", BigInteger, nullable=False),
    Column("head", String(64)),
)

# Signed-out dashboard sessions, read by every receiver process on each dashboard request, until
# the session would have expired anyway (``expires_at``, epoch ms); then any write may drop it.
dashboard_revocations = Table(
    "dashboard_revocations",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("revoked_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_dashboard_revocations_expires_at", "expires_at"),
)
