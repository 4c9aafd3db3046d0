"""One entry point from a data-set spec (``synthetic``, a folder, a file or the log) to :class:`Interactions`.

The CLI passes whatever the user typed; this module decides which loader fits, so that the common sources
need no options and only a generic table has to say which columns hold users and items. The feedback log (a
``postgresql://`` URL or a folder of its Parquet export) alone takes a window, a decay and a base run.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path

from recsys.core.errors import ConfigError, DataError
from trainer.data.hetrec import PLAYS_FILE, load_hetrec
from trainer.data.interactions import Interactions
from trainer.data.lastfm1k import COLUMNS as LASTFM1K_COLUMNS
from trainer.data.lastfm1k import load_lastfm1k
from trainer.data.log import is_log_folder, is_postgres_url, load_log
from trainer.data.synthetic import SyntheticConfig, generate
from trainer.data.table import PARQUET_SUFFIXES, load_table

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?")
_SNIFF_BYTES = 1 << 16


def load_dataset(
    spec: str,
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    weight_col: str | None = None,
    time_col: str | None = None,
    synthetic: SyntheticConfig | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    decay_days: float | None = None,
    base: Path | None = None,
) -> Interactions:
    """``synthetic``, a HetRec folder, a Last.fm-1K log, any table with named user and item columns, or the
    feedback log (``postgresql://...`` or an export folder) from ``since`` until ``until``, its weights halved
    every ``decay_days``, merged with the history of the run in ``base``."""
    columns = {
        "--user-col": user_col,
        "--item-col": item_col,
        "--weight-col": weight_col,
        "--time-col": time_col,
    }
    log_options = {"--since": since, "--until": until, "--decay-days": decay_days, "--base": base}
    if is_postgres_url(spec) or (Path(spec).is_dir() and is_log_folder(Path(spec))):
        _ignore_columns(columns, "the feedback log")
        return load_log(spec, since=since, until=until, decay_days=decay_days, base=base).interactions
    given = [flag for flag, value in log_options.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only for the feedback log (a postgresql:// URL or an export folder)")
    if spec == SYNTHETIC:
        _ignore_columns(columns, "the synthetic data set")
        return generate(synthetic or SyntheticConfig()).interactions

    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec}: no such file or directory")
    if path.is_dir():
        if not (path / PLAYS_FILE).is_file():
            raise DataError(f"{spec}: a folder must be the HetRec Last.fm 2K set (no {PLAYS_FILE} in it)")
        _ignore_columns(columns, "a HetRec folder")
        return load_hetrec(path)
    if is_lastfm1k(path):
        _ignore_columns(columns, "a Last.fm-1K log")
        return load_lastfm1k(path)
    if user_col is None or item_col is None:
        raise DataError(f"{spec}: a table needs --user-col and --item-col to say which columns hold them")
    return load_table(path, user_col=user_col, item_col=item_col, weight_col=weight_col, time_col=time_col)


def is_lastfm1k(path: Path) -> bool:
    """Whether the first line looks like a Last.fm-1K play: 6 tab-separated fields, an ISO time second."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return False
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    fields = first.split("\t")
    return len(fields) == len(LASTFM1K_COLUMNS) and _ISO_TIME.match(fields[1]) is not None


def _ignore_columns(columns: dict[str, str | None], what: str) -> None:
    given = [flag for flag, value in columns.items() if value is not None]
    if given:
        logger.warning("%s ignored: %s has fixed columns", ", ".join(given), what)
