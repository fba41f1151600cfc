"""``GET /metrics``: scraped from real receivers on loopback, read with Prometheus' own parser."""

from __future__ import annotations

import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from rtms_lifecycle import Scope, Tracker
from rtms_lifecycle.receiver.metrics import scope_label
from rtms_lifecycle.server import create_app
from rtms_lifecycle.store import migrate as _migrate
from tests import _deliveries
from tests._live import SECRET, serving, signed
from tests._postgres import PostgresServer, as_role, create_database, stopped
from tests._served import serve_command, uvicorn_workers

TOKEN = "metrics-token-for-tests"
T0 = 1_700_000_000_000
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels, parsed by prometheus-client."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a counter not yet incremented)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def scrape(url: str, token: str | None = None) -> Samples:
    """GET /metrics, which must answer 200 in Prometheus' text format."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return samples(answer.text)


def deliver(url: str, body: bytes, **sign_kwargs: Any) -> httpx.Response:
    """POST ``body`` to the webhook on a new connection, signed unless told otherwise."""
    return httpx.post(f"{url}/webhook", content=body, headers=signed(body, **sign_kwargs))


def test_scope_label_only_names_known_scopes() -> None:
    """A delivery's scope label is its event's known prefix, else none: no label from a sender."""
    assert scope_label("meeting.rtms_started") == "meeting"
    assert scope_label("contact_center.voice_rtms_stopped") == "contact_center"
    assert scope_label("rtms.concurrency_limited") == "none"
    assert scope_label("evil-label.rtms_started") == "none"
    assert scope_label(None) == "none"


def test_metrics_count_deliveries_by_outcome_and_scope(db_url: str, tmp_path: Path) -> None:
    """Each recorded delivery counts once under its outcome and scope, and its write is timed."""
    started = _deliveries.raw("started", "m-1", T0)
    webinar = _deliveries.raw("started", "w-1", T0, scope=Scope.WEBINAR)
    with serve_command(db_url, tmp_path) as served:
        for body in (started, started, webinar, b'{"event": "meeting.rtms_started"}'):
            assert deliver(served.url, body).status_code == 200
        found = scrape(served.url)
    total = "rtms_lifecycle_deliveries_total"
    assert value(found, total, outcome="applied", scope="meeting") == 1
    assert value(found, total, outcome="duplicate", scope="meeting") == 1
    assert value(found, total, outcome="applied", scope="webinar") == 1
    assert value(found, total, outcome="rejected", scope="meeting") == 1
    assert value(found, "rtms_lifecycle_store_seconds_count") == 4
    assert value(found, "rtms_lifecycle_store_seconds_bucket", le="+Inf") == 4
    assert value(found, "rtms_lifecycle_store_failures_total") == 0


def test_metrics_count_refusals_by_reason(sqlite_url: str, tmp_path: Path) -> None:
    """Refused requests count under their reason: forged, stale, unsigned, too large."""
    body = _deliveries.raw("started", "m-1", T0)
    with serve_command(sqlite_url, tmp_path) as served:
        assert deliver(served.url, body, secret="guessed").status_code == 401
        assert deliver(served.url, body, ts=int(time.time()) - 3600).status_code == 401
        assert httpx.post(f"{served.url}/webhook", content=body).status_code == 401
        assert deliver(served.url, b"{" + b" " * 70_000 + b"}").status_code == 413
        found = scrape(served.url)
    refusals = "rtms_lifecycle_webhook_refusals_total"
    assert value(found, refusals, reason="signature_invalid") == 1
    assert value(found, refusals, reason="timestamp_stale") == 1
    assert value(found, refusals, reason="signature_missing") == 1
    assert value(found, refusals, reason="body_too_large") == 1
    assert not any(name == "rtms_lifecycle_deliveries_total" for name, _ in found)


def test_metrics_need_the_api_token_when_one_is_set(sqlite_url: str, tmp_path: Path) -> None:
    """With an API token, /metrics answers 401 without it and the metrics with it."""
    with serve_command(sqlite_url, tmp_path, env={"RTMS_LIFECYCLE_API_TOKEN": TOKEN}) as served:
        assert httpx.get(f"{served.url}/metrics").status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert httpx.get(f"{served.url}/metrics", headers=wrong).status_code == 401
        assert value(scrape(served.url, TOKEN), "rtms_lifecycle_store_failures_total") == 0


def test_no_metrics_serves_no_metrics(sqlite_url: str, tmp_path: Path) -> None:
    """serve --no-metrics has no /metrics route."""
    with serve_command(sqlite_url, tmp_path, "--no-metrics") as served:
        assert httpx.get(f"{served.url}/metrics").status_code == 404


def test_info_names_version_and_schema_revision(sqlite_url: str, tmp_path: Path) -> None:
    """rtms_lifecycle_info is 1, labelled with the package version and the schema revision."""
    from importlib.metadata import version

    with serve_command(sqlite_url, tmp_path) as served:
        found = scrape(served.url)
    labels = {"version": version("rtms-lifecycle"), "schema_revision": _migrate.head_revision()}
    assert value(found, "rtms_lifecycle_info", **labels) == 1


@pytest.mark.postgres
def test_active_streams_agree_across_receivers(postgres_url: str, tmp_path: Path) -> None:
    """Two receivers on one database report the same active streams, whichever got the events."""
    bodies = [
        _deliveries.raw("started", "m-1", T0),
        _deliveries.raw("started", "m-2", T0),
        _deliveries.raw("stopped", "m-2", T0 + 1),
        _deliveries.raw("started", "s-1", T0, scope=Scope.SESSION),
    ]
    with (
        serve_command(postgres_url, tmp_path) as first,
        serve_command(postgres_url, tmp_path) as second,
    ):
        for body in bodies:
            assert deliver(first.url, body).status_code == 200
        for served in (first, second):
            found = scrape(served.url)
            assert value(found, "rtms_lifecycle_active_streams", scope="meeting") == 1
            assert value(found, "rtms_lifecycle_active_streams", scope="session") == 1
            assert value(found, "rtms_lifecycle_active_streams", scope="webinar") == 0
        assert value(scrape(second.url), "rtms_lifecycle_deliveries_total") == 0


def test_store_failure_is_counted(sqlite_url: str, tmp_path: Path) -> None:
    """A delivery the store cannot record (its table gone) answers 503 and counts as a failure."""
    with ExitStack() as stack:
        tracker = stack.enter_context(Tracker(sqlite_url))
        url = stack.enter_context(serving(create_app(tracker, secrets=[SECRET])))
        assert deliver(url, _deliveries.raw("started", "m-1", T0)).status_code == 200
        with sqlite3.connect(tmp_path / "rtms.db") as conn:
            conn.execute("ALTER TABLE deliveries RENAME TO deliveries_gone")
        assert deliver(url, _deliveries.raw("started", "m-2", T0)).status_code == 503
        found = scrape(url)
    assert value(found, "rtms_lifecycle_store_failures_total") >= 1
    assert value(found, "rtms_lifecycle_deliveries_total", outcome="applied", scope="meeting") >= 1


def _per_worker(directory: Path) -> dict[str, float]:
    """Deliveries counted by each worker process, read from its own multiprocess files."""
    counted: dict[str, float] = {}
    for file in directory.glob("counter_*.db"):
        pid = file.stem.removeprefix("counter_")
        alone = directory.parent / f"worker-{pid}"
        alone.mkdir(exist_ok=True)
        shutil.copy(file, alone)
        registry = CollectorRegistry()
        # prometheus_client's multiprocess module has no type annotations.
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        counted[pid] = sum(
            s.value
            for family in registry.collect()
            for s in family.samples
            if s.name == "rtms_lifecycle_deliveries_total"
        )
    return counted


def test_metrics_add_up_across_uvicorn_workers(sqlite_url: str, tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, every worker's scrape shows the deliveries of all workers."""
    Tracker(sqlite_url).close()  # the schema exists before two workers open the database
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    sent = 0
    with uvicorn_workers(sqlite_url, tmp_path, workers=2, env=env) as served:

        def one(i: int) -> int:
            return deliver(served.url, _deliveries.raw("started", f"m-{i}", T0)).status_code

        with ThreadPoolExecutor(8) as pool:
            # Until both workers have recorded some: the kernel hands connections to either.
            for _ in range(20):
                statuses = list(pool.map(one, range(sent, sent + 20)))
                assert statuses == [200] * 20
                sent += 20
                if len([n for n in _per_worker(shared).values() if n > 0]) == 2:
                    break
        counted = _per_worker(shared)
        assert len([n for n in counted.values() if n > 0]) == 2, counted
        scrapes = [scrape(served.url) for _ in range(10)]
    assert sum(counted.values()) == sent
    for found in scrapes:
        assert (
            value(found, "rtms_lifecycle_deliveries_total", outcome="applied", scope="meeting")
            == sent
        )
        assert value(found, "rtms_lifecycle_active_streams", scope="meeting") == sent


def test_a_missing_multiprocess_directory_is_a_configuration_error(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR naming no directory stops create_app with a clear error,
    before any database is created."""
    from rtms_lifecycle import ConfigurationError

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigurationError, match="PROMETHEUS_MULTIPROC_DIR"):
        create_app(sqlite_url, secrets=[SECRET])
    assert not (tmp_path / "rtms.db").exists()


# --- claims ---------------------------------------------------------------------------------------


def test_claim_gauges_count_unclaimed_and_unconnected_streams(db_url: str, tmp_path: Path) -> None:
    """Unclaimed and unconnected live streams past --claims-older-than, and the latency of first
    connections, read from the store by any receiver."""
    from rtms_lifecycle.clock import now_ms

    # "young" stays younger than the threshold however slowly the server starts under load.
    old = now_ms() - 3_600_000
    with Tracker(db_url) as tracker:
        tracker.ingest_batch(
            [_deliveries.body("started", f"m-{i}", old + i) for i in range(3)]
            + [_deliveries.body("started", "young", now_ms() - 2_000)]
        )
        held = tracker.claim("w1")
        joined = tracker.claim("w1")
        assert held is not None
        assert joined is not None
        tracker.report_connected(joined, at_ms=old + 1 + 1_500)
        stats = tracker.claim_stats(older_than=600)
        assert (stats.unclaimed, stats.unconnected, stats.connected) == (1, 2, 1)
    with serve_command(db_url, tmp_path, "--claims-older-than", "600") as served:
        found = scrape(served.url)
    assert value(found, "rtms_lifecycle_unclaimed_streams") == 1  # m-2 ("young" is too young)
    assert value(found, "rtms_lifecycle_unconnected_streams") == 2  # m-0 held, m-2
    latency = "rtms_lifecycle_connect_latency_seconds"
    assert value(found, f"{latency}_bucket", le="1.0") == 0
    assert value(found, f"{latency}_bucket", le="2.0") == 1
    assert value(found, f"{latency}_bucket", le="+Inf") == 1
    assert value(found, f"{latency}_gcount") == 1
    assert value(found, f"{latency}_gsum") == pytest.approx(1.5)


def test_claims_older_than_out_of_range_is_refused(tmp_path: Path) -> None:
    from rtms_lifecycle.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="claims_older_than"):
        create_app(f"sqlite:///{tmp_path}/rtms.db", secrets=[SECRET], claims_older_than=-1)


def test_store_gauges_for_on_call(sqlite_url: str) -> None:
    """Interrupted and long-live streams by scope, each consumer's lag and parked count, and the
    long-live threshold, read from the store at the scrape."""
    with (
        Tracker(sqlite_url) as tracker,
        serving(create_app(tracker, secrets=[SECRET], long_live=3600)) as url,
    ):
        tracker.ingest(_deliveries.raw("started", "old", T0))
        tracker.ingest(_deliveries.raw("started", "down", T0))
        tracker.ingest(_deliveries.raw("interrupted", "down", T0 + 1))
        tracker.consumer("billing", from_start=True)
        found = scrape(url)
    assert value(found, "rtms_lifecycle_interrupted_streams", scope="meeting") == 1
    assert value(found, "rtms_lifecycle_active_streams", scope="meeting") == 1
    assert value(found, "rtms_lifecycle_long_live_streams", scope="meeting") == 2
    assert value(found, "rtms_lifecycle_long_live_streams", scope="session") == 0
    assert value(found, "rtms_lifecycle_long_live_seconds") == 3600
    assert value(found, "rtms_lifecycle_subscription_lag", consumer="billing") == 3
    assert value(found, "rtms_lifecycle_subscription_parked", consumer="billing") == 0


def test_serve_long_live_sets_the_threshold(sqlite_url: str, tmp_path: Path) -> None:
    """`serve --long-live 1h`: the threshold /metrics exports, and the streams it counts."""
    from rtms_lifecycle.clock import now_ms

    with Tracker(sqlite_url) as tracker:
        tracker.ingest(_deliveries.raw("started", "two-hours", now_ms() - 2 * 3_600_000))
        tracker.ingest(_deliveries.raw("started", "ten-minutes", now_ms() - 600_000))
    with serve_command(sqlite_url, tmp_path, "--long-live", "1h") as served:
        found = scrape(served.url)
    assert value(found, "rtms_lifecycle_long_live_seconds") == 3600
    assert value(found, "rtms_lifecycle_long_live_streams", scope="meeting") == 1


def test_recent_stops_count_webhook_stops_and_expiries(db_url: str, tmp_path: Path) -> None:
    """`expire` (a cron, not the receiver) closes a stream whose stop never came: /metrics
    counts it among the recent stops as expired, apart from Zoom's stops; stops older than the
    window are left out. Read from the store, on SQLite and PostgreSQL."""
    from rtms_lifecycle.clock import now_ms

    hour = 3_600_000
    now = now_ms()
    with Tracker(db_url) as tracker:
        tracker.ingest(_deliveries.raw("started", "stopped", now - 2 * hour))
        tracker.ingest(_deliveries.raw("stopped", "stopped", now - hour, stop_reason=6))
        tracker.ingest(_deliveries.raw("started", "no-stop", now - 3 * hour))
        tracker.ingest(_deliveries.raw("started", "no-stop-either", now - 4 * hour))
        tracker.ingest(_deliveries.raw("started", "long-ago", now - 12 * hour))
        tracker.ingest(_deliveries.raw("stopped", "long-ago", now - 11 * hour, stop_reason=6))
        assert len(tracker.expire(timedelta(hours=1))) == 2
        assert tracker.recent_stops(timedelta(hours=6)) == (1, 2)
    with serve_command(db_url, tmp_path) as served:
        found = scrape(served.url)
    assert value(found, "rtms_lifecycle_recent_stops", kind="webhook") == 1
    assert value(found, "rtms_lifecycle_recent_stops", kind="expired") == 2
    assert value(found, "rtms_lifecycle_recent_stops_seconds") == 6 * 3600


@pytest.mark.parametrize("given", ["soon", "0", "-1h", "nan", "1h-", ""])
def test_serve_refuses_a_long_live_that_is_not_a_duration(sqlite_url: str, given: str) -> None:
    """A bad `--long-live` is a usage error (exit 2) naming the option, before anything starts."""
    from click.testing import CliRunner

    from rtms_lifecycle.cli.commands import cli

    result = CliRunner().invoke(cli, ["--db", sqlite_url, "serve", "--long-live", given])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--long-live'" in result.output
    assert "Traceback" not in result.output


def test_a_long_live_threshold_that_is_not_positive_is_refused(sqlite_url: str) -> None:
    """long_live=0 is a ConfigurationError naming it, before anything is opened."""
    from rtms_lifecycle import ConfigurationError

    with pytest.raises(ConfigurationError, match="long_live"):
        create_app(sqlite_url, secrets=[SECRET], long_live=0)


def test_stops_are_counted_by_their_catalogue_name(sqlite_url: str, tmp_path: Path) -> None:
    """Code 0 is UNDEFINED and a stop without a reason NOT_PROVIDED, as `stats` names them; only
    codes outside the catalogue share UNKNOWN."""
    t0 = 1_700_000_000_000
    reasons: list[int | None] = [0, None, 99, 1234, 6]
    with serve_command(sqlite_url, tmp_path) as served:
        for n, reason in enumerate(reasons):
            assert deliver(served.url, _deliveries.raw("started", f"s{n}", t0)).status_code == 200
            stop = _deliveries.raw("stopped", f"s{n}", t0 + 1000, stop_reason=reason)
            assert deliver(served.url, stop).status_code == 200
        found = scrape(served.url)
    counted = {
        dict(labels)["reason"]: count
        for (name, labels), count in found.items()
        if name == "rtms_lifecycle_stops_total"
    }
    assert {reason: n for reason, n in counted.items() if n} == {
        "UNDEFINED": 1, "NOT_PROVIDED": 1, "UNKNOWN": 2, "MEETING_ENDED": 1,
    }  # fmt: skip


# --- capacity, and whether the store answered ------------------------------------------------

#: Gauges read from the store: left out of a scrape that cannot read it.
STORE_GAUGES = (
    "rtms_lifecycle_active_streams",
    "rtms_lifecycle_interrupted_streams",
    "rtms_lifecycle_recent_stops",
    "rtms_lifecycle_unclaimed_streams",
    "rtms_lifecycle_unconnected_streams",
)


def names(found: Samples) -> set[str]:
    return {name for name, _ in found}


def test_sqlite_capacity_gauges_answer_while_the_store_cannot_be_read(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The file sizes and the disk's room (os.stat, os.statvfs); with the database moved
    away, store_readable is 0, the store gauges are left out, the disk gauges still answer;
    moved back, everything is read again."""
    path = tmp_path / "rtms.db"
    with serve_command(sqlite_url, tmp_path) as served:
        assert deliver(served.url, _deliveries.raw("started", "m-1", T0)).status_code == 200
        found = scrape(served.url)
        assert value(found, "rtms_lifecycle_store_readable") == 1
        assert value(found, "rtms_lifecycle_database_bytes", file="db") == path.stat().st_size > 0
        assert ("rtms_lifecycle_database_bytes", frozenset({("file", "wal")})) in found
        free = value(found, "rtms_lifecycle_database_disk_free_bytes")
        assert 0 < free <= value(found, "rtms_lifecycle_database_disk_size_bytes")
        assert set(STORE_GAUGES) <= names(found)
        path.rename(tmp_path / "rtms.db.moved")
        try:
            down = scrape(served.url)
        finally:
            (tmp_path / "rtms.db.moved").rename(path)
        back = scrape(served.url)
    assert value(down, "rtms_lifecycle_store_readable") == 0
    assert names(down).isdisjoint(STORE_GAUGES)
    assert ("rtms_lifecycle_database_bytes", frozenset({("file", "db")})) not in down
    assert value(down, "rtms_lifecycle_database_disk_free_bytes") > 0
    assert value(down, "rtms_lifecycle_database_disk_size_bytes") > 0
    assert value(down, "rtms_lifecycle_deliveries_total", outcome="applied", scope="meeting") == 1
    assert not path.with_name("rtms.db.moved").exists()
    assert value(back, "rtms_lifecycle_store_readable") == 1
    assert value(back, "rtms_lifecycle_active_streams", scope="meeting") == 1


@pytest.mark.postgres
def test_postgresql_size_and_store_readable_while_the_server_is_stopped(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """pg_database_size as file="db", no disk gauge (the server's disk is not this host's);
    with the server stopped, store_readable is 0 and every store gauge, the size included, is
    left out while the counters still answer; once it is back, 1 again."""
    url = own_postgres.url(create_database(own_postgres))
    with serve_command(url, tmp_path) as served:
        assert deliver(served.url, _deliveries.raw("started", "m-1", T0)).status_code == 200
        found = scrape(served.url)
        assert value(found, "rtms_lifecycle_store_readable") == 1
        assert value(found, "rtms_lifecycle_database_bytes", file="db") > 1_000_000
        assert not {n for n in names(found) if n.startswith("rtms_lifecycle_database_disk")}
        assert ("rtms_lifecycle_database_bytes", frozenset({("file", "wal")})) not in found
        with stopped(own_postgres):
            down = scrape(served.url)
        back = _scrape_until_readable(served.url)
    assert value(down, "rtms_lifecycle_store_readable") == 0
    assert names(down).isdisjoint({*STORE_GAUGES, "rtms_lifecycle_database_bytes"})
    assert value(down, "rtms_lifecycle_deliveries_total", outcome="applied", scope="meeting") == 1
    assert value(back, "rtms_lifecycle_active_streams", scope="meeting") == 1


def _scrape_until_readable(url: str, timeout: float = 30.0) -> Samples:
    """A scrape that read the store, polled for: a pool's connections end with the server."""
    deadline = time.monotonic() + timeout
    while value(found := scrape(url), "rtms_lifecycle_store_readable") != 1:
        assert time.monotonic() < deadline, "the store is still unreadable"
        time.sleep(0.1)
    return found


@pytest.mark.postgres
def test_the_receivers_role_may_read_the_database_size(postgres_url: str) -> None:
    """pg_database_size(current_database()) needs CONNECT on the database, which any role that
    logs in has: a role granted only what `db grant` grants reads it."""
    from rtms_lifecycle.store.engine import create_store_engine
    from rtms_lifecycle.store.roles import grant_receiver

    role = f"metrics_{postgres_url.rsplit('/', 1)[1][-8:]}"
    Tracker(postgres_url).close()
    admin = create_store_engine(postgres_url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD 'secret'")
        grant_receiver(admin, role)
    finally:
        admin.dispose()
    with Tracker(as_role(postgres_url, role)) as receiver:
        capacity = receiver.capacity()
    assert capacity.database_bytes is not None
    assert capacity.database_bytes > 0
    assert (capacity.wal_bytes, capacity.disk_free_bytes, capacity.disk_size_bytes) == (None,) * 3
