"""The webhook receiver (extra ``server``): the FastAPI app, its routes, health, metrics, logging
and the dashboard. Its public import path is :mod:`rtms_lifecycle.server`.
"""
