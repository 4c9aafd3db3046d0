"""What ``python -m gateway`` and ``python -m feedback`` share: settings with command-line overrides, the one
logging setup (:mod:`recsys.core.logs`: JSON lines off a terminal) and one line with status 2 for a deliberate
error."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from recsys.core.errors import RecsysError
from recsys.core.logs import configure_logging
from recsys.core.settings import Settings, get_settings


def run_service(run: Callable[[Settings], object], overrides: Mapping[str, Any]) -> int:
    """Starts ``run`` with the settings of the environment, ``overrides`` that are not None winning; the exit status."""
    try:
        settings = get_settings()
        configure_logging(settings.log_level)
        run(settings.model_copy(update={k: v for k, v in overrides.items() if v is not None}))
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
