"""``python -m recsys`` is the same as the ``recsys`` command."""

from recsys.cli import run

run()
