"""``python -m rtms_lifecycle``: the command line, where the script is not on PATH."""

from rtms_lifecycle.cli import main

main()
