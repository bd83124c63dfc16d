"""``python -m meterlake``: the same as the ``meterlake`` command."""

from meterlake.cli import main

main()
