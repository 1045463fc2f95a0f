"""``python -m macflow ...``: the ``macflow`` command."""

from macflow.cli import main

main()
