"""follow, forward and subscriptions: durable consumers from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook

from rtms_lifecycle import Tracker
from rtms_lifecycle.cli.commands import cli

from ._deliveries import body
from ._live import serving
from .test_cli import ENTRY_POINT
from .test_feed import T0

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_ENV = "TEST_FORWARD_SECRET"
FEED_KEYS = {
    "id",
    "stream_id",
    "from_state",
    "to_state",
    "name",
    "kind",
    "event_ts",
    "source",
    "late",
    "recorded_at",
    "delivery_id",
}


def invoke(db: str, *args: str) -> Result:
    """Run the CLI in-process on ``db``."""
    return CliRunner().invoke(cli, ["--db", db, *args], catch_exceptions=False)


@pytest.fixture
def db(db_url: str) -> str:
    """A database of each backend with three streams started and one of them stopped."""
    with Tracker(db_url) as tracker:
        for n, sid in enumerate(("s1", "s2", "s3")):
            tracker.ingest(body("started", sid, T0 + n, scope_id=sid))
        tracker.ingest(body("stopped", "s2", T0 + 10, scope_id="s2"))
    return db_url


def follow_lines(db: str, *args: str) -> list[dict[str, Any]]:
    """What ``follow --json`` prints until idle, parsed."""
    result = invoke(db, "follow", *args, "--json", "--idle-exit", "0.3")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


def test_follow_prints_every_transition_with_stream_keys(db: str) -> None:
    """follow --json prints one line per transition: the feed's keys and state/scope/reason."""
    lines = follow_lines(db, "billing", "--from-start")
    assert [(t["stream_id"], t["to_state"]) for t in lines] == [
        ("s1", "started"),
        ("s2", "started"),
        ("s3", "started"),
        ("s2", "stopped"),
    ]
    assert set(lines[0]) == FEED_KEYS | {"state", "scope", "stop_reason_name"}
    assert (lines[1]["state"], lines[1]["scope"]) == ("stopped", "meeting")


def test_follow_resumes_after_the_last_line_written(db: str) -> None:
    """A second follow of the same consumer prints only what came after the first one's lines."""
    assert len(follow_lines(db, "billing", "--from-start")) == 4
    with Tracker(db) as tracker:
        tracker.ingest(body("stopped", "s1", T0 + 20, scope_id="s1"))
    assert [(t["stream_id"], t["to_state"]) for t in follow_lines(db, "billing")] == [
        ("s1", "stopped")
    ]


def test_new_follower_starts_at_the_end_without_from_start(db: str) -> None:
    """Without --from-start a new consumer prints nothing of what was there before it."""
    assert follow_lines(db, "newcomer") == []


def test_follow_says_it_waits_for_a_dead_holders_lease(db: str) -> None:
    """Taking over from a killed follow waits for its lease: one line on stderr says so and until
    when, then the transitions come as usual."""
    with Tracker(db) as tracker:
        dead = tracker.consumer("billing", from_start=True, lease=1.0)
        assert dead.next() is not None  # takes the lease, then never reports back: killed
    result = invoke(db, "follow", "billing", "--json", "--idle-exit", "1.5")
    assert result.exit_code == 0, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("Waiting for the previous holder of consumer 'billing' (")
    assert re.search(r"its lease runs until about \d{4}-\d\d-\d\dT[\d:]+Z", line), line
    assert len(result.stdout.splitlines()) == 4


def test_follow_says_nothing_when_no_one_holds_the_consumer(db: str) -> None:
    result = invoke(db, "follow", "billing", "--json", "--from-start", "--idle-exit", "0.3")
    assert result.exit_code == 0
    assert result.stderr == ""


def test_follow_human_lines(db: str) -> None:
    """Without --json, follow prints one readable line per transition."""
    result = invoke(db, "follow", "human", "--from-start", "--idle-exit", "0.3")
    assert result.output.splitlines()[3].endswith(
        "s2 meeting started -> stopped (stop) HOST_TRIGGERED"
    )


def test_follow_human_lines_name_the_stop_reason_on_the_stop_only(db: str) -> None:
    """A stopped stream's earlier transitions are printed without its stop reason."""
    lines = invoke(db, "follow", "plain", "--from-start", "--idle-exit", "0.3").output.splitlines()
    s2 = [line for line in lines if " s2 " in line]
    assert [line.endswith("HOST_TRIGGERED") for line in s2] == [False] * (len(s2) - 1) + [True]


def test_follow_into_a_closed_pipe_keeps_the_unread_transitions(db: str) -> None:
    """When the reader goes away, follow exits 1 naming the transition the consumer resumes at,
    and the next follow starts there: the line whose write failed is not lost."""
    with Tracker(db) as tracker:
        # More lines than a pipe buffers (64 KiB), so that follow's write fails on a full pipe.
        tracker.ingest_many(
            body("started", f"bulk{n}", T0 + n, scope_id=f"bulk{n}") for n in range(400)
        )
    shell = f"'{ENTRY_POINT}' --db '{db}' follow piped --json --from-start | head -1"
    first = subprocess.run(shell, shell=True, capture_output=True, text=True, timeout=60)
    assert json.loads(first.stdout)["id"] == 1
    resumes_at = int(first.stderr.rsplit("resumes at transition ", 1)[1])
    rest = [t["id"] for t in follow_lines(db, "piped")]
    assert rest == list(range(resumes_at, 405))


# --- forward --------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook receiver that fails the first ``failures`` attempts and checks signatures."""

    failures: int = 2
    hang: float = 0.0
    attempts: list[tuple[str, int]] = field(default_factory=list)
    received: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        """The receiver as an ASGI app."""
        app = FastAPI()
        webhook = Webhook(SECRET)

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            raw = await request.body()
            payload = webhook.verify(raw, dict(request.headers))  # raises: a 500, a failure
            msg_id = request.headers["webhook-id"]
            with self.lock:
                self.attempts.append((msg_id, payload["data"]["id"]))
                failing = len(self.attempts) <= self.failures
            if failing and self.hang:
                time.sleep(self.hang)
            if failing:
                return Response(status_code=503)
            self.received[msg_id] = payload
            return Response(status_code=204)

        return app


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """The forward secret in the environment."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return SECRET_ENV


def forward(db: str, url: str, *args: str) -> Result:
    """``forward hooks URL`` until idle, with quick retries."""
    return invoke(
        db,
        "forward",
        "hooks",
        url,
        "--secret-env",
        SECRET_ENV,
        "--idle-exit",
        "0.5",
        "--retry-delay",
        "0.05",
        *args,
    )


def test_forward_posts_signed_transitions_retrying_failures(db: str, secret: str) -> None:
    """forward POSTs each transition, signed; failed attempts are retried under the same id."""
    receiver = Receiver(failures=2)
    with serving(receiver.app()) as base:
        result = forward(db, f"{base}/hook", "--from-start")
    assert result.exit_code == 0, result.output
    first_id = receiver.attempts[0][0]
    assert [a[0] for a in receiver.attempts[:3]] == [first_id] * 3
    assert sorted(p["data"]["id"] for p in receiver.received.values()) == [1, 2, 3, 4]
    assert first_id == f"hooks:{receiver.attempts[0][1]}"
    assert {p["type"] for p in receiver.received.values()} == {"rtms_lifecycle.transition"}
    assert f"Forwarded 4 transitions to {base}/hook as 'hooks'; 2 retries, 0 parked." in (
        result.stdout
    )


def test_forward_counts_a_timeout_as_a_failure(db: str, secret: str) -> None:
    """A receiver that does not answer within --timeout gets the transition again."""
    receiver = Receiver(failures=1, hang=1.5)
    with serving(receiver.app()) as base:
        result = forward(db, f"{base}/hook", "--from-start", "--timeout", "0.3")
    assert result.exit_code == 0, result.output
    assert len(receiver.received) == 4
    assert receiver.attempts[0][0] == receiver.attempts[1][0]


def test_forward_parks_then_retry_requeues(db: str, secret: str) -> None:
    """After --max-attempts the transition is parked (listed); `subscriptions retry` re-queues."""
    receiver = Receiver(failures=2)
    with serving(receiver.app()) as base:
        result = forward(db, f"{base}/hook", "--from-start", "--max-attempts", "2")
        assert result.exit_code == 0, result.output
        assert len(receiver.received) == 3
        assert "Forwarded 3 transitions" in result.stdout
        assert "1 retry, 1 parked. `rtms-lifecycle subscriptions` lists them" in result.stdout
        (status,) = json.loads(invoke(db, "subscriptions", "--json").output)
        assert (status["consumer"], status["parked"], status["lag"]) == ("hooks", 1, 0)
        assert status["last_error"] == f"ForwardFailed: POST {base}/hook: HTTP 503"
        retried = invoke(db, "subscriptions", "retry", "hooks", "--json")
        assert json.loads(retried.output) == {"consumer": "hooks", "requeued": 1}
        assert forward(db, f"{base}/hook").exit_code == 0
    assert len(receiver.received) == 4
    (status,) = json.loads(invoke(db, "subscriptions", "--json").output)
    assert status["parked"] == 0


def test_subscriptions_table_lists_consumers(db: str) -> None:
    """`subscriptions` shows each consumer with its lag and parked count."""
    follow_lines(db, "billing")
    result = invoke(db, "subscriptions")
    assert result.exit_code == 0
    assert "billing" in result.output


def test_subscriptions_table_counts_in_the_singular(db: str) -> None:
    """One consumer is "1 subscription", not "1 subscriptions"."""
    follow_lines(db, "billing")
    assert invoke(db, "subscriptions").output.splitlines()[0].strip() == "1 subscription"


def test_subscriptions_without_consumers_says_there_are_none(db: str) -> None:
    """With no consumer, `subscriptions` says so and how to start one, instead of an empty table."""
    result = invoke(db, "subscriptions")
    assert result.exit_code == 0
    assert result.output.startswith("No durable consumers yet")
    assert "follow NAME" in result.output


def test_subscriptions_retry_of_an_unknown_consumer_fails(db: str) -> None:
    """Re-queueing for a consumer that does not exist exits 1 naming it."""
    result = CliRunner().invoke(cli, ["--db", db, "subscriptions", "retry", "nobody"])
    assert result.exit_code == 1
    assert "'nobody'" in result.output


def test_forward_needs_its_secret(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """forward without the secret's variable set is a usage error naming the variable."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    result = CliRunner().invoke(
        cli, ["--db", db, "forward", "c", "http://127.0.0.1:9/", "--secret-env", SECRET_ENV]
    )
    assert result.exit_code == 2
    assert f"${SECRET_ENV} is not set" in result.output


def test_forward_refuses_a_secret_that_is_not_base64(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret that is not whsec_ and base64 is refused before anything is sent."""
    monkeypatch.setenv(SECRET_ENV, "whsec_not base64!")
    result = CliRunner().invoke(
        cli, ["--db", db, "forward", "c", "http://127.0.0.1:9/", "--secret-env", SECRET_ENV]
    )
    assert result.exit_code == 1
    assert "not a Standard Webhooks secret" in result.output


@pytest.fixture(autouse=True)
def _no_stray_env() -> Iterator[None]:
    """Nothing here leaks the database choice of the environment into these commands."""
    saved = os.environ.pop("RTMS_LIFECYCLE_DB", None)
    yield
    if saved is not None:
        os.environ["RTMS_LIFECYCLE_DB"] = saved
