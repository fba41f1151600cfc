"""Zoom waits 3 s for an answer: with the store held by another process or connection for longer,
no sender of 16, 32 or 64 at once is answered later than that (a real serve process)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.webhook import SECRET_ENV
from tests import _deliveries
from tests._live import serving_process, signed
from tests.test_faults import holding_the_store

T0 = 1_700_000_000_000  # a real time (Nov 2023), as Zoom sends them

ZOOM_WAITS = 3.0
# How long the store is held: beyond Zoom's wait, so that every answer in it is a refusal.
HELD = 5.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("RTMS_LIFECYCLE_DB", raising=False)


def send(client: httpx.Client, sender: int, until: float) -> list[tuple[int, float]]:
    answers = []
    n = 0
    while time.monotonic() < until:
        n += 1
        body = _deliveries.raw("started", f"s-{sender}-{n}", T0 + 1_000)
        begun = time.monotonic()
        status = client.post("/webhook", content=body, headers=signed(body)).status_code
        answers.append((status, time.monotonic() - begun))
    return answers


@pytest.mark.parametrize("senders", [16, 32, 64])
def test_no_answer_comes_after_zoom_stopped_waiting(
    db_url: str, tmp_path: Path, senders: int
) -> None:
    with Tracker(db_url):
        pass  # the schema
    with (
        serving_process(db_url, tmp_path) as url,
        httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=senders)) as c,
        ThreadPoolExecutor(senders) as pool,
    ):
        with holding_the_store(db_url, "streams"):
            until = time.monotonic() + HELD
            runs = list(pool.map(lambda i: send(c, i, until), range(senders)))
        answers = [answer for run in runs for answer in run]
        late = [took for _, took in answers if took > ZOOM_WAITS]
        statuses = {status for status, _ in answers}
        print(
            f"{senders} senders: {len(answers)} answers, {len(late)} over {ZOOM_WAITS} s, "
            f"slowest {max(t for _, t in answers):.2f} s, statuses {statuses}"
        )
        assert late == []
        assert statuses <= {200, 503}
