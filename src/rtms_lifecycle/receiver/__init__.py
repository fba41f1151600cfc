"""The webhook receiver (extra ``server``). Its public import path is :mod:`rtms_lifecycle.server`.

- :mod:`~rtms_lifecycle.receiver.app`: :func:`create_app`, the ready app, with ``/healthz`` and
  ``/metrics``; :mod:`~rtms_lifecycle.receiver.runner`: :func:`run` serves it with uvicorn.
- :mod:`~rtms_lifecycle.receiver.webhook`: the webhook route; :mod:`~rtms_lifecycle.receiver.api`:
  the read API; :mod:`~rtms_lifecycle.receiver.answers`: the models of their answers.
- :mod:`~rtms_lifecycle.receiver.settings` (defaults, the logger), http, logs, logthrottle,
  metrics, bearer and the ``dashboard`` pages.
"""

# Every module here needs the extra: a missing package is named once, for the whole receiver.
try:
    import anyio  # noqa: F401
    import fastapi  # noqa: F401
    import fastapi_offline  # noqa: F401
    import jinja2  # noqa: F401
    import limits  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"rtms_lifecycle.server needs FastAPI and uvicorn ({exc.name} is missing): "
        "install the 'server' extra, e.g. pip install 'rtms-lifecycle[server]'"
    ) from exc
