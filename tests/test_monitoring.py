"""deploy/prometheus and deploy/grafana: every metric and label they use is one ``/metrics``
exports (scraped from a real receiver that saw every kind of traffic), promtool accepts the
rules, and the rules fire (and stay quiet) on the series of deploy/prometheus/alerts_test.yml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rtms_lifecycle import Tracker
from rtms_lifecycle.server import create_app
from tests import _deliveries
from tests._live import SECRET, serving, signed

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "rtms-lifecycle.json"
T0 = 1_700_000_000_000
# Labels Prometheus adds to every scraped series, and its own metric of a target's health.
SCRAPE_LABELS = frozenset({"instance", "job"})
PROMETHEUS_OWN = {"up": SCRAPE_LABELS}
_NAME = re.compile(r"\b(rtms_lifecycle_[a-z_]+|up)\b(?!\s*\()")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[str]]:
    """Each sample name ``/metrics`` exports, with its label names, after traffic of every kind
    (deliveries, a stop, a refusal, an unhandled RTMS-like event, a durable consumer)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('monitoring')}/m.db"
    with Tracker(url) as tracker, serving(create_app(tracker, secrets=[SECRET])) as base:
        tracker.consumer("billing", from_start=True)
        bodies = [
            _deliveries.raw("started", "m-1", T0),
            _deliveries.raw("interrupted", "m-2", T0),
            _deliveries.raw("stopped", "m-1", T0 + 1, stop_reason=6),
            json.dumps({"event": "meeting.rtms_paused", "event_ts": T0, "payload": {}}).encode(),
        ]
        for body in bodies:
            assert httpx.post(f"{base}/webhook", content=body, headers=signed(body)).is_success
        assert httpx.post(f"{base}/webhook", content=b"{}").status_code == 401
        text = httpx.get(f"{base}/metrics", timeout=30).text
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels | SCRAPE_LABELS) for name, labels in found.items()}


def rule_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def problems(expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """What in ``expr`` names a metric or a label ``/metrics`` does not export."""
    known = {**exported, **PROMETHEUS_OWN}
    names = set(_NAME.findall(expr)) - {"by", "without"}
    found = [f"unknown metric {name}" for name in sorted(names) if name not in known]
    labels = set().union(*(known.get(name, frozenset()) for name in names))
    used = {label.strip() for group in _BY.findall(expr) for label in group.split(",")}
    used |= set(_MATCHER.findall(expr))
    found += [f"unknown label {label}" for label in sorted(used - labels - {""})]
    return found


def test_alert_rules_use_only_exported_metrics(exported: dict[str, frozenset[str]]) -> None:
    """Every metric and label an alert rule uses is exported by /metrics."""
    rules = list(rule_expressions())
    assert len(rules) >= 8
    assert {name: problems(expr, exported) for name, expr in rules} == {
        name: [] for name, _ in rules
    }


def test_dashboard_uses_only_exported_metrics(exported: dict[str, frozenset[str]]) -> None:
    """Every metric and label a dashboard panel queries is exported by /metrics."""
    targets = list(dashboard_expressions())
    assert len(targets) >= 8
    assert [(title, problems(expr, exported)) for title, expr in targets] == [
        (title, []) for title, _ in targets
    ]


def test_the_drift_check_sees_a_wrong_name(exported: dict[str, frozenset[str]]) -> None:
    """The check itself catches a misspelt metric and a label the metric does not have."""
    assert problems("rate(rtms_lifecycle_delivery_total[5m])", exported) == [
        "unknown metric rtms_lifecycle_delivery_total"
    ]
    assert problems("sum by (reason) (rtms_lifecycle_active_streams)", exported) == [
        "unknown label reason"
    ]


def test_dashboard_and_provisioning_load(exported: dict[str, frozenset[str]]) -> None:
    """The dashboard has unique panel ids and the provisioning files name its data source."""
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    source = yaml.safe_load((DEPLOY / "grafana" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]


def test_promtool_accepts_the_rules_and_the_config(
    skip_or_fail: Callable[[str], NoReturn],
) -> None:
    """``promtool check rules`` and ``check config`` pass (.ci/run installs promtool)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (apt-get install prometheus)")
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", str(RULES.parent / "prometheus.yml")],
    ):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_the_rules_pass(skip_or_fail: Callable[[str], NoReturn]) -> None:
    """``promtool test rules alerts_test.yml``: a rotated secret or a skewed clock on a quiet
    account pages, refusals beside recorded deliveries do not; the refusal spike is a share of
    all webhook requests; mostly expiries among recent stops opens a ticket; a disk filling up
    opens a ticket, then pages; an unreadable store pages, and keeps the unclaimed page firing."""
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool is not installed (apt-get install prometheus)")
    done = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert {
        "RtmsDeliveriesAllRefused",
        "RtmsWebhookRefusalSpike",
        "RtmsStaleSignatures",
        "RtmsStopsExpiring",
        "RtmsDiskFillingUp",
        "RtmsDiskAlmostFull",
        "RtmsStoreUnreadable",
        "RtmsStreamsUnclaimed",
    } <= tested


def test_refusal_series_start_at_zero(tmp_path: Path) -> None:
    """Every refusal reason is exported before any refusal of its kind (from 0: the counters are
    this process's, which other tests may have counted in), so that the first refusal of a quiet
    account is an increase a rule sees; and the recent stops are exported by kind."""
    url = f"sqlite:///{tmp_path}/z.db"
    with Tracker(url) as tracker, serving(create_app(tracker, secrets=[SECRET])) as base:
        text = httpx.get(f"{base}/metrics", timeout=30).text
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    for reason in ("signature_invalid", "timestamp_stale", "timestamp_future"):
        assert found["rtms_lifecycle_webhook_refusals_total", (("reason", reason),)] >= 0
    assert found["rtms_lifecycle_recent_stops", (("kind", "expired"),)] == 0
    assert found["rtms_lifecycle_recent_stops", (("kind", "webhook"),)] == 0
    assert found["rtms_lifecycle_recent_stops_seconds", ()] == 6 * 3600
