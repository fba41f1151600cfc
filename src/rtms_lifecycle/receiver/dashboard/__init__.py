"""A dashboard for people, served by the receiver at ``/dashboard`` (extra ``server``).

Sign in once with the read API's token; see live streams, why streams stop, interruptions,
problem deliveries and concurrency alerts, and a timeline per stream. Every chart is SVG drawn
on the server; the page's styles and its refresh script ship in this package.
"""

from __future__ import annotations

from rtms_lifecycle.receiver.dashboard.auth import COOKIE_NAME, SESSION_SECONDS
from rtms_lifecycle.receiver.dashboard.router import (
    PREFIX,
    REFRESH_SECONDS,
    create_dashboard_router,
)

__all__ = ["COOKIE_NAME", "PREFIX", "REFRESH_SECONDS", "SESSION_SECONDS", "create_dashboard_router"]
