"""The read API refuses numbers the database cannot hold with a 422, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from rtms_lifecycle import Tracker
from rtms_lifecycle.server import create_app
from tests._live import SECRET, serving

TOKEN = "read-token"


@pytest.fixture
def api(db_url: str) -> Iterator[httpx.Client]:
    """A real receiver on loopback with the read API, over each database."""
    with (
        Tracker(db_url) as tracker,
        serving(create_app(tracker, secrets=[SECRET], api_token=TOKEN)) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client,
    ):
        yield client


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/streams?limit=99999999999999999999999", "limit"),
        ("/stats/stop-reasons?since=-99999999999999999999", "since"),
        ("/stats/stop-reasons?since=99999999999999999999", "since"),
        ("/stats/stop-reasons?until=300000000000000", "until"),
    ],
)
def test_numbers_out_of_range_are_422(api: httpx.Client, query: str, field: str) -> None:
    """A limit or time past what the database holds is a 422 naming the parameter, not a 500."""
    response = api.get(query)
    assert response.status_code == 422
    assert {error["loc"][1] for error in response.json()["detail"]} == {field}


@pytest.mark.parametrize(
    "query",
    [
        "/streams?limit=9223372036854775807",
        "/stats/stop-reasons?since=253402300799999",
        "/stats/stop-reasons?since=-62135596800000&until=9999-12-31T23:59:59Z",
    ],
)
def test_the_largest_numbers_are_answered(api: httpx.Client, query: str) -> None:
    """The bounds themselves are valid queries, answered with 200."""
    response = api.get(query)
    assert response.status_code == 200
    assert response.json() == []
