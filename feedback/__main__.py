"""``python -m feedback``: the feedback writer image's entry point (intake, spool, PostgreSQL), without the CLI.

The image has neither typer, rich, pandas nor matplotlib (the A/B report is the CLI's), so this reads
:mod:`recsys.core.settings` itself and takes the same overrides as ``recsys serve feedback``; a bad setting is one
line and status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feedback.main import run
from recsys.core.errors import RecsysError
from recsys.core.settings import get_settings


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
    try:
        settings = get_settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        updates: dict[str, Any] = {"feedback_port": args.port, "spool_dir": args.spool_dir}
        run(settings.model_copy(update={k: v for k, v in updates.items() if v is not None}))
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
