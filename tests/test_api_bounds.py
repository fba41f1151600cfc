"""The read API refuses values it cannot answer with a 4xx naming the parameter, on both
databases: numbers the database cannot hold, text it cannot compare, ambiguous credentials."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote_from_bytes

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rtms_lifecycle import Tracker
from tests._live import read_api

TOKEN = "read-token-for-tests"


@contextmanager
def _read_api(db: str) -> Iterator[httpx.Client]:
    with Tracker(db) as tracker, read_api(tracker, TOKEN) as client:
        yield client


@pytest.fixture
def api(db_url: str) -> Iterator[httpx.Client]:
    """A real receiver on loopback with the read API, over each database."""
    with _read_api(db_url) as client:
        yield client


@pytest.fixture
def sqlite_api(sqlite_url: str) -> Iterator[httpx.Client]:
    """The same receiver over SQLite only, for what no database takes part in."""
    with _read_api(sqlite_url) as client:
        yield client


def fields(response: httpx.Response) -> set[str]:
    """The parameters a 422 names."""
    assert response.status_code == 422, response.text
    return {error["loc"][1] for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/streams?limit=99999999999999999999999", "limit"),
        ("/streams?limit=1001", "limit"),
        ("/deliveries?limit=9223372036854775807", "limit"),
        ("/stats/stop-reasons?since=-99999999999999999999", "since"),
        ("/stats/stop-reasons?since=99999999999999999999", "since"),
        ("/stats/stop-reasons?until=300000000000000", "until"),
        ("/stats/stop-reasons?until=" + "9" * 5000, "until"),
    ],
)
def test_numbers_out_of_range_are_422(api: httpx.Client, query: str, field: str) -> None:
    """A limit or time past what the database holds is a 422 naming the parameter, not a 500."""
    assert fields(api.get(query)) == {field}


@pytest.mark.parametrize(
    "query",
    [
        "/streams?limit=1000",
        "/stats/stop-reasons?since=253402300799999",
        "/stats/stop-reasons?since=-62135596800000&until=9999-12-31T23:59:59Z",
    ],
)
def test_the_largest_numbers_are_answered(api: httpx.Client, query: str) -> None:
    """The bounds themselves are valid queries, answered with 200."""
    response = api.get(query)
    assert response.status_code == 200
    assert response.json() in ([], {"items": [], "next": None})


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/streams?account_id=%00", "account_id"),
        ("/streams?account_id=a%00b", "account_id"),
        ("/stats/stop-reasons?account_id=a%00b", "account_id"),
        ("/streams/a%00b", "stream_id"),
    ],
)
def test_nul_in_text_is_422(api: httpx.Client, query: str, field: str) -> None:
    """Text holding NUL, which no stored id has and PostgreSQL cannot compare, is a 422."""
    response = api.get(query)
    assert fields(response) == {field}
    assert "must not contain NUL characters" in response.text


@pytest.mark.parametrize(
    "query",
    [
        "since=1999.5",
        "until=0.002",
        "since=-1.5",
        "since=1.5e0",
        "until=20000000000.5",
    ],
)
def test_a_fraction_of_a_millisecond_is_422(api: httpx.Client, query: str) -> None:
    """A number with a fraction is a 422, not a time read as epoch seconds."""
    response = api.get(f"/stats/stop-reasons?{query}")
    assert fields(response) == {query.partition("=")[0]}
    assert "epoch milliseconds must be a whole number" in response.text


@pytest.mark.parametrize("route", ["/streams", "/stats/stop-reasons", "/streams/s", "/metrics"])
@pytest.mark.parametrize("tokens", [(TOKEN, "wrong"), ("wrong", TOKEN), (TOKEN, TOKEN)])
def test_more_than_one_authorization_header_is_400(
    sqlite_api: httpx.Client, route: str, tokens: tuple[str, str]
) -> None:
    """Two Authorization headers are a 400 saying so, whichever comes first."""
    headers = [("Authorization", f"Bearer {token}") for token in tokens]
    response = sqlite_api.get(route, headers=headers)
    assert response.status_code == 400
    assert "more than one Authorization header" in response.json()["detail"]


_PARAMETERS = st.sampled_from(
    [
        ("/streams", "state"),
        ("/streams", "scope"),
        ("/streams", "active"),
        ("/streams", "limit"),
        ("/streams", "account_id"),
        ("/stats/stop-reasons", "since"),
        ("/stats/stop-reasons", "until"),
        ("/stats/stop-reasons", "by_scope"),
        ("/stats/stop-reasons", "account_id"),
        ("/streams/{}", None),
    ]
)
# Any bytes, percent-encoded: not UTF-8, NUL, control characters, what looks like a number or a
# date, and text.
_ENCODED = st.one_of(
    st.binary(max_size=40),
    st.integers().map(lambda n: str(n).encode()),
    st.floats().map(lambda x: repr(x).encode()),
    st.from_regex(
        r"-?[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}(T[0-9]{1,2}:[0-9]{2}([.][0-9]{1,9})?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})?)?",
        fullmatch=True,
    ).map(str.encode),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
).map(lambda value: quote_from_bytes(value, safe=""))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parameter=_PARAMETERS, value=_ENCODED, repeated=st.booleans())
@example(parameter=("/streams", "account_id"), value="%00", repeated=False)
@example(parameter=("/streams/{}", None), value="a%00b", repeated=False)
@example(parameter=("/stats/stop-reasons", "since"), value="1999.5", repeated=False)
@example(parameter=("/stats/stop-reasons", "until"), value="%ed%a0%80", repeated=True)
@example(parameter=("/streams", "limit"), value=str(2**64), repeated=False)
def test_no_query_value_gets_a_5xx_or_an_error_log(
    api: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    parameter: tuple[str, str | None],
    value: str,
    repeated: bool,
) -> None:
    """Whatever a read route's parameter holds, the answer is 200, 404 or 422, and nothing is
    logged as an error."""
    path, name = parameter
    if name is None:
        target = path.format(value or "x")
    else:
        target = f"{path}?{name}={value}" + (f"&{name}={value}" if repeated else "")
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        response = api.get(target)
    assert response.status_code in (200, 404, 422), (target, response.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _cursor(*values: object) -> str:
    """A hand-made cursor holding ``values``, as a client could forge one."""
    text = json.dumps(list(values), separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "values", "why"),
    [
        ("/streams", ["streams", 99999999999999999999999, "x"], "a number past"),
        ("/streams", ["streams", -(2**63) - 1, "x"], "a number past"),
        ("/streams", ["streams", 1, "\x00"], "text with a NUL character"),
        ("/streams", ["streams", 1, "a\ud800b"], "text that is not valid Unicode"),
        ("/deliveries", ["deliveries", 2**63], "a number past"),
        ("/alerts", ["alerts", 2**63, 1], "a number past"),
        ("/alerts", ["alerts", 1, -(2**64)], "a number past"),
        ("/subscriptions", ["subscriptions", "a\x00"], "text with a NUL character"),
    ],
)
def test_a_cursor_holding_what_no_column_holds_is_422(
    api: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    path: str,
    values: list[object],
    why: str,
) -> None:
    """A forged cursor with a number past 64 bits or text with NUL is a 422 naming ``cursor``
    and why: not a 500 (SQLite's OverflowError) nor a 503 logged as an outage (PostgreSQL)."""
    with caplog.at_level(logging.ERROR):
        response = api.get(f"{path}?cursor={_cursor(*values)}")
    assert fields(response) == {"cursor"}
    assert why in response.json()["detail"][0]["msg"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("/streams", ["streams", 2**63 - 1, "x"]),
        ("/streams", ["streams", -(2**63), ""]),
        ("/deliveries", ["deliveries", 2**63 - 1]),
        ("/alerts", ["alerts", -(2**63), 2**63 - 1]),
    ],
)
def test_a_cursor_at_the_bounds_is_answered(
    api: httpx.Client, path: str, values: list[object]
) -> None:
    """The largest and smallest 64-bit numbers are positions like any other: an empty page."""
    response = api.get(f"{path}?cursor={_cursor(*values)}")
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next": None}


def test_the_tracker_refuses_such_a_cursor_with_a_value_error(tracker: Tracker) -> None:
    """The library's pages refuse such a cursor with a ValueError saying why, before the
    database sees it (it was an OverflowError from the driver, or a StoreError)."""
    reads: list[tuple[Callable[[str], object], list[object]]] = [
        (lambda c: tracker.stream_page(cursor=c), ["streams", 2**63, "x"]),
        (lambda c: tracker.stream_page(cursor=c), ["streams", 1, "\x00"]),
        (lambda c: tracker.delivery_page(cursor=c), ["deliveries", -(2**63) - 1]),
        (lambda c: tracker.alert_page(cursor=c), ["alerts", 1, 2**63]),
    ]
    for read, values in reads:
        with pytest.raises(ValueError, match=r"not a cursor of this list \("):
            read(_cursor(*values))
    with pytest.raises(ValueError, match="past what the database holds"):
        tracker.transitions_since(f"{2**63}:1")


_CURSOR_ROUTES = st.sampled_from(["/streams", "/deliveries", "/alerts", "/subscriptions"])
# What a JSON cursor can hold: numbers of any size, text with NUL or lone surrogates, and the
# wrong types.
_CURSOR_VALUE = st.one_of(
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1]),
    st.text(st.characters(exclude_categories=()), max_size=8),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(route=_CURSOR_ROUTES, values=st.lists(_CURSOR_VALUE, min_size=1, max_size=3))
@example(route="/streams", values=[99999999999999999999999, "x"])
@example(route="/streams", values=[1, "\x00"])
@example(route="/deliveries", values=[2**63])
@example(route="/alerts", values=[1, 2**63])
def test_no_cursor_gets_a_5xx_or_an_error_log(
    api: httpx.Client, caplog: pytest.LogCaptureFixture, route: str, values: list[object]
) -> None:
    """Whatever a cursor of a route's own kind holds, the answer is 200 or 422, and nothing is
    logged as an error."""
    cursor = _cursor(route.lstrip("/"), *values)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        response = api.get(f"{route}?cursor={cursor}")
    assert response.status_code in (200, 422), (route, values, response.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
