"""A claim in one statement on PostgreSQL: ``rtms_lifecycle_claim``, a PL/pgSQL function.

The same rules as ``store/claims.py`` (the generic path, which SQLite runs), in one round trip
instead of eight: the older of the first queued stream and the first held stream whose lease
ran out, each locked with ``FOR NO KEY UPDATE ... SKIP LOCKED``; the claim row locked and
checked (a holder renewed meanwhile: the stale queue row goes, and it looks again, at most
``attempts`` times); an expired holder's end and the claim recorded in ``claim_history``; the
queue row removed. It returns the new token and the stream's row, read under the lock
(docs/decisions/0116-claim-statement.md). SQLite gets nothing.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Which streams a worker may take: live (never 'new'), then its filters; a null filter is none.
_TAKEABLE = """s.state != 'stopped' AND s.state <> 'new'
        AND (scopes IS NULL OR s.scope = ANY(scopes))
        AND (wanted_scope_id IS NULL OR s.scope_id = wanted_scope_id)
        AND (wanted_account_id IS NULL OR s.account_id = wanted_account_id)
        AND NOT (s.stream_id = ANY(excluded))"""

_CREATE = f"""CREATE FUNCTION rtms_lifecycle_claim(
    taker text, now_ms bigint, lease_ms bigint, scopes text[], wanted_scope_id text,
    wanted_account_id text, excluded text[], attempts integer
) RETURNS TABLE (token bigint, stream streams) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    queued streams;
    expired streams;
    picked streams;
    from_queue boolean;
    previous stream_claims;
    new_token bigint;
BEGIN
    FOR attempt IN 1..attempts LOOP
        -- Locking the queue or claim row too makes a claimer that reaches it after the
        -- taker committed skip it, instead of finding the claim held.
        SELECT s.* INTO queued FROM claim_queue AS q JOIN streams AS s
            ON s.stream_id = q.stream_id
        WHERE {_TAKEABLE}
        ORDER BY q.started_at, q.stream_id LIMIT 1
        FOR NO KEY UPDATE OF s, q SKIP LOCKED;
        SELECT s.* INTO expired FROM stream_claims AS c JOIN streams AS s
            ON s.stream_id = c.stream_id
        WHERE c.ended_at IS NULL AND c.expires_at <= now_ms AND {_TAKEABLE}
        ORDER BY s.started_at, s.stream_id LIMIT 1
        FOR NO KEY UPDATE OF s, c SKIP LOCKED;
        IF queued.stream_id IS NULL AND expired.stream_id IS NULL THEN
            RETURN;
        END IF;
        -- The older start (a missing one last, PostgreSQL's order), then the smaller id
        -- (code points, as Python compares them).
        from_queue := expired.stream_id IS NULL OR (queued.stream_id IS NOT NULL AND (
            (queued.started_at IS NOT NULL AND expired.started_at IS NULL)
            OR queued.started_at < expired.started_at
            OR (queued.started_at IS NOT DISTINCT FROM expired.started_at
                AND queued.stream_id COLLATE "C" < expired.stream_id)));
        picked := CASE WHEN from_queue THEN queued ELSE expired END;
        SELECT c.* INTO previous FROM stream_claims AS c
        WHERE c.stream_id = picked.stream_id FOR UPDATE;
        IF NOT FOUND THEN
            new_token := 1;
            INSERT INTO stream_claims (stream_id, token, worker, claimed_at, renewed_at,
                expires_at, connected)
            VALUES (picked.stream_id, 1, taker, now_ms, now_ms, now_ms + lease_ms, false);
        ELSIF previous.ended_at IS NULL AND previous.expires_at > now_ms THEN
            -- Renewed late between the two reads: held, so its queue row is stale.
            IF from_queue THEN
                DELETE FROM claim_queue WHERE stream_id = picked.stream_id;
            END IF;
            CONTINUE;
        ELSE
            IF previous.ended_at IS NULL THEN
                -- The holder's lease ran out and nobody said so: its end is recorded now.
                INSERT INTO claim_history (stream_id, token, worker, event, source, at,
                    recorded_at, reason)
                VALUES (picked.stream_id, previous.token, previous.worker, 'expired', 'system',
                    previous.expires_at, now_ms, 'seen by ' || taker);
            END IF;
            new_token := previous.token + 1;
            UPDATE stream_claims SET token = new_token, worker = taker, claimed_at = now_ms,
                renewed_at = now_ms, expires_at = now_ms + lease_ms, ended_at = NULL,
                end_reason = NULL, connected = false, connected_at = NULL,
                disconnected_at = NULL
            WHERE stream_claims.stream_id = picked.stream_id;
        END IF;
        DELETE FROM claim_queue WHERE stream_id = picked.stream_id;
        INSERT INTO claim_history (stream_id, token, worker, event, source, at, recorded_at,
            reason)
        VALUES (picked.stream_id, new_token, taker, 'claimed', 'worker', now_ms, now_ms, NULL);
        token := new_token;
        stream := picked;
        RETURN NEXT;
        RETURN;
    END LOOP;
END $$"""

_DROP = (
    "DROP FUNCTION rtms_lifecycle_claim(text, bigint, bigint, text[], text, text, text[], integer)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_DROP)
