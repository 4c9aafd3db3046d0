"""The HetRec 2011 Last.fm 2K data set: artist play counts of 1,892 users, the project's real benchmark.

Only ``user_artists.dat`` (play counts) and ``artists.dat`` (names, for readable recommendations) are read.
The set has no play timestamps, so the result has neither ``timestamps`` nor ``events``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd

from recsys.core.errors import DataError
from trainer.data.interactions import Interactions
from trainer.data.table import RowPosition, aggregate, clean_frame

logger = logging.getLogger(__name__)

PLAYS_FILE = "user_artists.dat"
ARTISTS_FILE = "artists.dat"


def load_hetrec(directory: Path) -> Interactions:
    """Play counts of the HetRec folder, with artist names attached as ``item_names``."""
    directory = Path(directory)
    plays_path = directory / PLAYS_FILE
    if not plays_path.is_file():
        raise DataError(f"{plays_path}: no such file or directory")
    try:
        plays = pd.read_csv(plays_path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{PLAYS_FILE}: cannot parse: {str(exc).strip() or type(exc).__name__}") from exc
    clean = clean_frame(
        plays,
        user_col="userID",
        item_col="artistID",
        weight_col="weight",
        time_col=None,
        source=PLAYS_FILE,
        position=RowPosition("line", 2),
    )
    return aggregate(clean, source=PLAYS_FILE, item_names=_artist_names(directory / ARTISTS_FILE))


def _artist_names(path: Path) -> dict[object, str] | None:
    """Artist id -> name; names are free text (quotes, odd characters), so no quoting and no NA guessing."""
    if not path.is_file():
        logger.warning("%s: not found; artists are shown by id", path)
        return None
    try:
        names = pd.read_csv(
            path,
            sep="\t",
            quoting=csv.QUOTE_NONE,
            usecols=["id", "name"],
            dtype={"name": str},
            keep_default_na=False,
            encoding="utf-8",
            encoding_errors="replace",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        logger.warning("%s: unreadable (%s); artists are shown by id", path.name, str(exc).strip())
        return None
    ids = pd.to_numeric(names["id"], errors="coerce")
    valid = ids.notna()
    if not valid.all():
        logger.warning("%s: skipped %d lines without a numeric id", path.name, int((~valid).sum()))
    return dict(zip(ids[valid].astype("int64").tolist(), names.loc[valid, "name"].tolist(), strict=True))
