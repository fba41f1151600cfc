"""A release and a renewal in one statement on PostgreSQL: ``rtms_lifecycle_release`` and
``rtms_lifecycle_renew``, PL/pgSQL functions.

The same rules as ``release`` and ``renew`` in ``store/claims.py`` (the generic path, which
SQLite runs): a rule changed in one must be changed in the other, or
``tests/test_claims_differential.py`` fails. A release locks the stream row (shared), then the
claim row; a claim missing, replaced or ended is left alone (false); else the stream goes back
to ``claim_queue``, the claim ends (``released``) and its history row is added. A renewal
locks the claim row; one missing, replaced or ended returns no row and writes nothing (the
caller reads why); else a lease that had run out while nobody took the stream is recorded
(``renewed_late``), the lease extended, and the claim's row and the stream's returned
(docs/decisions/0116-claim-statement.md and its amendment). SQLite gets nothing.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 16:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RELEASE = """CREATE FUNCTION rtms_lifecycle_release(
    sid text, expected bigint, why text, now_ms bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    held stream_claims;
BEGIN
    -- The stream row first, as a claim and a stop lock it: a stop waits for the release, so
    -- that it finds (and removes) the queue row the release adds.
    PERFORM 1 FROM streams AS s WHERE s.stream_id = sid FOR SHARE;
    SELECT c.* INTO held FROM stream_claims AS c WHERE c.stream_id = sid FOR UPDATE;
    IF NOT FOUND OR held.token <> expected OR held.ended_at IS NOT NULL THEN
        RETURN false;
    END IF;
    INSERT INTO claim_queue (stream_id, started_at)
    SELECT s.stream_id, s.started_at FROM streams AS s
    WHERE s.stream_id = sid AND s.state != 'stopped' AND s.state <> 'new'
    ON CONFLICT (stream_id) DO NOTHING;
    UPDATE stream_claims AS c SET ended_at = now_ms, end_reason = 'released'
    WHERE c.stream_id = sid;
    INSERT INTO claim_history (stream_id, token, worker, event, source, at, recorded_at, reason)
    VALUES (sid, expected, held.worker, 'released', 'worker', now_ms, now_ms, why);
    RETURN true;
END $$"""

_RENEW = """CREATE FUNCTION rtms_lifecycle_renew(
    sid text, expected bigint, lease_ms bigint, now_ms bigint
) RETURNS TABLE (claim stream_claims, stream streams) LANGUAGE plpgsql AS $$
DECLARE
    held stream_claims;
BEGIN
    SELECT c.* INTO held FROM stream_claims AS c WHERE c.stream_id = sid FOR UPDATE;
    IF NOT FOUND OR held.token <> expected OR held.ended_at IS NOT NULL THEN
        RETURN;
    END IF;
    IF held.expires_at <= now_ms THEN
        -- Nobody took the stream meanwhile: the lease goes on, and the gap is on record.
        INSERT INTO claim_history (stream_id, token, worker, event, source, at, recorded_at,
            reason)
        VALUES (sid, expected, held.worker, 'renewed_late', 'worker', now_ms, now_ms, NULL);
    END IF;
    UPDATE stream_claims AS c SET renewed_at = now_ms, expires_at = now_ms + lease_ms
    WHERE c.stream_id = sid RETURNING c.* INTO held;
    claim := held;
    SELECT s.* INTO stream FROM streams AS s WHERE s.stream_id = sid;
    RETURN NEXT;
END $$"""

_DROP = (
    "DROP FUNCTION rtms_lifecycle_renew(text, bigint, bigint, bigint)",
    "DROP FUNCTION rtms_lifecycle_release(text, bigint, text, bigint)",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_RELEASE)
        op.execute(_RENEW)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _DROP:
            op.execute(statement)
