"""PostgreSQL roles: what the receiver's role may do, granted by the database's owner.

Two roles: the owner (migrations, prunes, ``audit``) and the receiver's, which may record
deliveries and read everything, but neither delete nor rewrite the audit history nor run the
prune's function (``rtms_lifecycle_prune_streams``, migration 0011). docs/deploying-postgres.md
lists the same statements.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

from rtms_lifecycle.exceptions import ConfigurationError
from rtms_lifecycle.store.errors import translated

__all__ = ["grant_receiver", "receiver_grants"]

_PRUNE_FUNCTION = "rtms_lifecycle_prune_streams(text[], text, bigint)"


def receiver_grants(role: str) -> list[str]:
    """The statements that let ``role`` (an identifier, quoted as SQL needs) run a receiver."""
    return [
        f"GRANT USAGE ON SCHEMA {{schema}} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE ON streams TO {role}",
        f"GRANT SELECT, INSERT ON deliveries, transitions, concurrency_alerts TO {role}",
        f"GRANT SELECT ON prunes, pruned_chains, alembic_version TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON subscriptions, subscription_parked TO {role}",
        # Workers' claims: the claim row changes hands; its history only grows.
        f"GRANT SELECT, INSERT, UPDATE ON stream_claims TO {role}",
        # The free streams: a start or release adds a row, a claim or stop removes it.
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON claim_queue TO {role}",
        f"GRANT SELECT, INSERT ON claim_history TO {role}",
        # A claim on PostgreSQL is this one call (migration 0016), with the role's own rights.
        "GRANT EXECUTE ON FUNCTION"
        " rtms_lifecycle_claim(text, bigint, bigint, text[], text, text, text[], integer)"
        f" TO {role}",
        # A renewal and a release too (migration 0017).
        "GRANT EXECUTE ON FUNCTION rtms_lifecycle_renew(text, bigint, bigint, bigint),"
        f" rtms_lifecycle_release(text, bigint, text, bigint) TO {role}",
        # Dashboard sign-outs: a sign-out drops the revocations that have expired.
        f"GRANT SELECT, INSERT, DELETE ON dashboard_revocations TO {role}",
        # The stop rollup: triggers on streams keep it in the receiver's transactions.
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON stop_reason_rollup TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {{schema}} TO {role}",
        f"REVOKE ALL ON FUNCTION {_PRUNE_FUNCTION} FROM PUBLIC, {role}",
    ]


def grant_receiver(engine: Engine, role: str) -> list[str]:
    """Grant ``role`` what a receiver needs, on the database of ``engine`` (run as its owner);
    returns the statements run. :class:`ConfigurationError` on SQLite, which has no roles."""
    if engine.dialect.name != "postgresql":
        raise ConfigurationError("db grant: only PostgreSQL has roles (SQLite has none)")
    if role.lower() == "public":
        # PUBLIC is every role of the cluster: each could then write the history.
        raise ConfigurationError(
            "db grant: PUBLIC is every role of the database server; name the receiver's own "
            "role (docs/deploying-postgres.md)"
        )
    quote = engine.dialect.identifier_preparer.quote
    with translated(None), engine.begin() as conn:
        owner = conn.execute(
            text(
                "SELECT pg_get_userbyid(proowner) FROM pg_proc"
                " WHERE proname = 'rtms_lifecycle_prune_streams'"
            )
        ).scalar()
        if owner == role:
            # Its statements revoke the prune's function from the role: from the owner, that
            # stops every prune until the owner's right is granted back by hand.
            raise ConfigurationError(
                f"db grant: {role} owns the database's objects and needs no grant; give the "
                "receiver a role of its own (docs/deploying-postgres.md). If an earlier "
                f"`db grant {role}` stopped prunes, run as {role}: GRANT EXECUTE ON FUNCTION "
                f"{_PRUNE_FUNCTION} TO {quote(role)}"
            )
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        statements = [s.replace("{schema}", quote(schema)) for s in receiver_grants(quote(role))]
        for statement in statements:
            conn.exec_driver_sql(statement)
    return statements
