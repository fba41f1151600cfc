"""The webhook receiver's public import path (``from rtms_lifecycle.server import create_app``).

The receiver itself lives in :mod:`rtms_lifecycle.receiver`; this module only re-exports it.
"""

from rtms_lifecycle.receiver.app import *  # noqa: F403
from rtms_lifecycle.receiver.app import __all__ as __all__
