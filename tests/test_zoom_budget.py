"""Zoom waits 3 s for an answer: with the store held by another process or connection for longer,
no sender of 16, 32 or 64 at once is answered later than that (a real serve process)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.webhook import SECRET_ENV
from tests import _deliveries
from tests._live import serving_process, signed

ZOOM_WAITS = 3.0
# How long the store is held: beyond Zoom's wait, so that every answer in it is a refusal.
HELD = 5.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("RTMS_LIFECYCLE_DB", raising=False)


@contextmanager
def held(db_url: str) -> Iterator[None]:
    if db_url.startswith("sqlite"):
        lite = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            lite.execute("ROLLBACK")
            lite.close()
        return
    conninfo = db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as pg:
        pg.execute("LOCK TABLE streams IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            pg.rollback()


def send(client: httpx.Client, sender: int, until: float) -> list[tuple[int, float]]:
    answers = []
    n = 0
    while time.monotonic() < until:
        n += 1
        body = _deliveries.raw("started", f"s-{sender}-{n}", 1_000)
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
        with held(db_url):
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
