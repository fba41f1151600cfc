"""``python -m rtms_lifecycle``: the command line, where the script is not on PATH."""

from .cli import main

main()
