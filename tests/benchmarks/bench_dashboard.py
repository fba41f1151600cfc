"""The dashboard's pages over a million stored streams, through the real receiver.

    python -m tests.benchmarks.bench_dashboard                  # 1,000,000 streams, 2,000 live
    python -m tests.benchmarks.bench_dashboard --streams 100000

The database comes from ``bench_queries``'s builder, its streams ending today (so the 24 h,
7 d and 30 d windows hold stops: 11,000, 78,000 and 333,000 of them at a million streams over
three months). The receiver runs as ``rtms-lifecycle serve`` does, in its own process; one
client signs in with the bearer token and times each page, from request to complete answer.
``GET /healthz`` is the baseline: the same server, client and connection answering a trivial
request. The window statistics are computed in the background (``StatsCache``); each page is
timed once they are ready (what every refresh but the first sees), and how long the
background computation of each window takes is reported too.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import re
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests._live import serving_process

from .bench_queries import DAY_MS, MONTH_MS, ensure_db, timed

TOKEN = "bench-dashboard-token"


def _wait_for_stats(client: httpx.Client, url: str, limit_s: float = 600.0) -> float:
    """Seconds until ``url`` shows its window statistics (computed in the background)."""
    started = time.perf_counter()
    while "Being computed" in client.get(url).text:
        if time.perf_counter() - started > limit_s:
            raise RuntimeError(f"{url}: statistics not ready after {limit_s} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def _last_page(client: httpx.Client) -> str:
    """The overview's last page of live streams, reached by following its "older" links."""
    url = "/dashboard"
    while found := re.search(r'<a href="([^"]+)" rel="next">', client.get(url).text):
        url = "/dashboard" + html.unescape(found.group(1))
    return url


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the database, serve it, time the pages."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=1_000_000)
    parser.add_argument("--live", type=int, default=2_000)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--db", type=Path, help="where to keep the big database")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.gettempdir())
    # Streams start so that the last ones (the live ones) start today.
    today = int(time.time() * 1000) // DAY_MS * DAY_MS
    start_ms = today - args.months * MONTH_MS
    path = args.db or tmp / f"rtms-bench-dashboard-{args.streams}.db"
    ensure_db(path, args.streams, args.live, args.months, args.rebuild, start_ms=start_ms)
    os.environ["RTMS_LIFECYCLE_API_TOKEN"] = TOKEN
    rng = random.Random(3)
    ids = iter([f"q{rng.randrange(args.streams):09d}" for _ in range(args.repeat * 4)])
    pages = {
        "dashboard, window 24h": "/dashboard?window=24h",
        "dashboard, window 7d": "/dashboard?window=7d",
        "dashboard, window 30d": "/dashboard?window=30d",
        "dashboard, window all": "/dashboard?window=all",
    }
    results: dict[str, Any] = {"streams": args.streams, "live": args.live, "pages": {}}
    with (
        tempfile.TemporaryDirectory() as workdir,
        serving_process(f"sqlite:///{path}", Path(workdir)) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600
        ) as client,
    ):
        # Live streams are paged by cursor: the last page is where the "older" links end.
        pages[f"dashboard, last page of {args.live:,} live streams"] = _last_page(client)
        for label, page in pages.items():
            seconds = _wait_for_stats(client, page)
            print(f"{label}: statistics ready after {seconds:.2f} s (background, first visit)")
            results.setdefault("first_stats_s", {})[label] = round(seconds, 3)
        rows = [("GET /healthz (baseline)", timed(lambda: client.get("/healthz"), args.repeat))]
        for label, page in pages.items():
            rows.append((label, timed(partial(client.get, page), args.repeat)))
        rows.append(
            (
                "stream page (random stream)",
                timed(lambda: client.get(f"/dashboard/streams/{next(ids)}"), args.repeat),
            )
        )
    base = rows[0][1]["median_ms"]
    print(f"{'page':<48} {'median':>10} {'p95':>10} {'vs healthz':>10}  target < 200 ms")
    for label, took in rows:
        met = (
            ""
            if label.startswith("GET /healthz")
            else ("met" if took["p95_ms"] < 200 else "NOT met")
        )
        print(
            f"{label:<48} {took['median_ms']:>7.1f} ms {took['p95_ms']:>7.1f} ms"
            f" {took['median_ms'] / base:>9.1f}x  {met}"
        )
        results["pages"][label] = took
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
