"""The ``rtms-lifecycle`` command: every command, its parameters, errors and rendering."""

from rtms_lifecycle.cli.commands import main

__all__ = ["main"]
