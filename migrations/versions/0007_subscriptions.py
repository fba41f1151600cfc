"""Durable subscriptions: consumers' cursors, leases and parked transitions; PostgreSQL notifies.

``subscriptions`` holds one row per named consumer (its feed cursor, the lease of the process
that delivers for it, the failing head's attempts); ``subscription_parked`` the transitions a
consumer's callback kept failing on. On PostgreSQL every statement that appends transitions
notifies channel ``rtms_lifecycle_feed``: the notification reaches listeners when the writer
commits, so subscribers in other processes wake at once instead of polling.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOTIFY = [
    """CREATE FUNCTION rtms_lifecycle_feed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- Only where a consumer exists: a NOTIFY serialises commits on a global queue lock,
        -- which a deployment without subscriptions should not pay for.
        IF EXISTS (SELECT 1 FROM subscriptions) THEN
            PERFORM pg_notify('rtms_lifecycle_feed', '');
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER transitions_feed_notify AFTER INSERT ON transitions
    FOR EACH STATEMENT EXECUTE FUNCTION rtms_lifecycle_feed_notify()""",
]


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("cursor_tx", sa.BigInteger(), nullable=False),
        sa.Column("cursor_id", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retry_at", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=True),
        sa.Column("delivered", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name=op.f("pk_subscriptions")),
    )
    op.create_table(
        "subscription_parked",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("transition_id", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("retry_at", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("parked_at", sa.BigInteger(), nullable=False),
        sa.Column("queued", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "transition_id", name=op.f("pk_subscription_parked")),
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in _NOTIFY:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS transitions_feed_notify ON transitions")
        op.execute("DROP FUNCTION IF EXISTS rtms_lifecycle_feed_notify()")
    op.drop_table("subscription_parked")
    op.drop_table("subscriptions")
