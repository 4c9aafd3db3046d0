"""``python -m feedback``: the feedback writer image's entry point (intake, spool, PostgreSQL), without the CLI.

The image has neither typer, rich, pandas nor matplotlib (the A/B report is the CLI's), so this reads
:mod:`recsys.core.settings` itself and takes the same overrides as ``recsys serve feedback``; a bad setting is one
line and status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from feedback.main import run
from recsys.core.service import run_service


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m feedback",
        description="Start the feedback writer (events -> fsync'd spool -> PostgreSQL at RECSYS_DATABASE_URL). "
        "Settings come from RECSYS_* environment variables; these options override them.",
    )
    p.add_argument("--port", type=int, help="HTTP port [RECSYS_FEEDBACK_PORT, 8090]")
    p.add_argument("--spool-dir", type=Path, help="durable spool folder [RECSYS_SPOOL_DIR]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_service(run, {"feedback_port": args.port, "spool_dir": args.spool_dir})


if __name__ == "__main__":
    sys.exit(main())
