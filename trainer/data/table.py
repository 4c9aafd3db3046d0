"""Any user-item table (CSV, TSV or Parquet) turned into :class:`Interactions`.

The checks here are the ones a person feeding their own export needs: every error names the file, the column
and, where it helps, the offending line and value, in one line, so the CLI can print it as is. The helpers
:func:`clean_frame` and :func:`aggregate` are shared with the other loaders so that every source is held to
the same rules.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.core.errors import DataError
from trainer.data.interactions import Interactions, from_frame

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
PARQUET_SUFFIXES = (".parquet", ".pq")

USER, ITEM, WEIGHT, TIME = "user", "item", "weight", "time"


class RowPosition:
    """Names row ``i`` of a frame the way its file shows it (``line 7`` of a CSV, ``row 6`` of Parquet)."""

    def __init__(self, unit: str, first: int) -> None:
        self.unit = unit
        self.first = first

    def __call__(self, index: int) -> str:
        return f"{self.unit} {index + self.first}"


def load_table(
    path: Path,
    *,
    user_col: str,
    item_col: str,
    weight_col: str | None = None,
    time_col: str | None = None,
) -> Interactions:
    """Reads a table of (user, item[, weight][, time]) rows; without a weight column each row weighs 1."""
    path = Path(path)
    frame, position = read_table(path)
    clean = clean_frame(
        frame,
        user_col=user_col,
        item_col=item_col,
        weight_col=weight_col,
        time_col=time_col,
        source=path.name,
        position=position,
    )
    return aggregate(clean, source=path.name)


def read_table(path: Path) -> tuple[pd.DataFrame, RowPosition]:
    """The raw frame of a CSV/TSV/Parquet file, and how to name its rows in messages."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a table file")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _read_text(path), RowPosition("line", 2)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path), RowPosition("row", 1)
    known = ", ".join(TEXT_SUFFIXES + PARQUET_SUFFIXES)
    raise DataError(f"{path.name}: unknown file type {suffix or '(none)'!r} (expected one of {known})")


def _read_text(path: Path) -> pd.DataFrame:
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    if not header.strip():
        raise DataError(f"{path.name}: file is empty")
    # Tab when the header has one: a comma inside a TSV header would otherwise win.
    sep = "\t" if "\t" in header else ","
    try:
        return pd.read_csv(
            path,
            sep=sep,
            encoding="utf-8",
            encoding_errors="replace",
            # Only empty fields are missing: a user or artist called "NA" or "None" stays a name.
            keep_default_na=False,
            na_values=[""],
        )
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path.name}: file is empty") from exc
    except pd.errors.ParserError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "parse error"
        kind = "TSV" if sep == "\t" else "CSV"
        raise DataError(f"{path.name}: cannot parse as {kind}: {reason}") from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as exc:
        raise DataError(f"{path.name}: reading Parquet needs a working pyarrow install") from exc
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path.name}: not a readable Parquet file: {reason}") from exc


def clean_frame(
    frame: pd.DataFrame,
    *,
    user_col: str,
    item_col: str,
    weight_col: str | None,
    time_col: str | None,
    source: str,
    position: RowPosition | None = None,
) -> pd.DataFrame:
    """Validates the named columns and returns them as ``user, item, weight[, time]``.

    Ids stay integers when they are integral (so ``IdMap.index("42")`` works) and become strings otherwise;
    weights are positive floats (zero-weight rows are dropped with a warning); times are epoch seconds.
    """
    where = position or RowPosition("row", 1)
    wanted = [c for c in (user_col, item_col, weight_col, time_col) if c is not None]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        noun = "column" if len(missing) == 1 else "columns"
        columns = ", ".join(str(c) for c in frame.columns)
        raise DataError(f"{source}: {noun} {names} not found (columns: {columns})")
    if frame.empty:
        raise DataError(f"{source}: no rows")

    clean = pd.DataFrame(
        {
            USER: _ids(frame[user_col], column=user_col, source=source, where=where),
            ITEM: _ids(frame[item_col], column=item_col, source=source, where=where),
            WEIGHT: (
                np.ones(len(frame), dtype=np.float64)
                if weight_col is None
                else _weights(frame[weight_col], column=weight_col, source=source, where=where)
            ),
        }
    )
    if time_col is not None:
        clean[TIME] = _times(frame[time_col], column=time_col, source=source, where=where)

    zero = clean[WEIGHT].to_numpy() == 0
    if zero.any():
        logger.warning("%s: dropped %d rows with zero weight", source, int(zero.sum()))
        clean = clean.loc[~zero].reset_index(drop=True)
        if clean.empty:
            raise DataError(f"{source}: no rows with a positive weight")
    return clean


def aggregate(clean: pd.DataFrame, *, source: str, item_names: dict[object, str] | None = None) -> Interactions:
    """Sums repeated (user, item) rows of a :func:`clean_frame` result and tells the user how many."""
    interactions, folded = from_frame(
        clean,
        user_col=USER,
        item_col=ITEM,
        weight_col=WEIGHT,
        time_col=TIME if TIME in clean.columns else None,
        item_names=item_names,
        source=source,
    )
    if folded:
        logger.warning(
            "%s: %d rows repeated a (user, item) pair seen before; their weights were summed", source, folded
        )
    return interactions


def _ids(values: pd.Series[Any], *, column: str, source: str, where: RowPosition) -> npt.NDArray[Any]:
    missing = values.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataError(f"{source}: column {column!r} has {int(missing.sum())} missing ids (first at {where(first)})")
    if pd.api.types.is_bool_dtype(values):
        return values.astype(str).to_numpy(dtype=object)
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(values):
        floats = values.to_numpy(dtype=np.float64)
        integral = np.all(np.isfinite(floats)) and np.all(floats == np.round(floats))
        if integral and np.all(np.abs(floats) < 2**53):
            return floats.astype(np.int64)
    return values.astype(str).to_numpy(dtype=object)


def _weights(values: pd.Series[Any], *, column: str, source: str, where: RowPosition) -> npt.NDArray[np.float64]:
    if pd.api.types.is_bool_dtype(values):
        raise DataError(f"{source}: column {column!r} holds true/false values, not numeric weights")
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raw = values.iloc[first]
        what = "a missing weight" if pd.isna(raw) else f"a non-numeric weight {raw!r}"
        raise DataError(f"{source}: column {column!r} has {what} at {where(first)}")
    negative = numbers < 0
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        raise DataError(
            f"{source}: column {column!r} has a negative weight {numbers[first]:g} at {where(first)} "
            f"({int(negative.sum())} negative in all)"
        )
    return numbers


def _times(values: pd.Series[Any], *, column: str, source: str, where: RowPosition) -> npt.NDArray[np.int64]:
    missing = values.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataError(f"{source}: column {column!r} has a missing time at {where(first)}")
    if pd.api.types.is_datetime64_any_dtype(values):
        return _epoch_seconds(values)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return _numeric_seconds(values.to_numpy(dtype=np.float64), column=column, source=source, where=where)
    numbers = pd.to_numeric(values, errors="coerce")
    if not numbers.isna().any():
        return _numeric_seconds(numbers.to_numpy(dtype=np.float64), column=column, source=source, where=where)
    text = values.astype(str)
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: column {column!r} has a time {text.iloc[first]!r} that is neither epoch seconds "
            f"nor an ISO 8601 date at {where(first)}"
        )
    return _epoch_seconds(parsed)


def _numeric_seconds(
    seconds: npt.NDArray[np.float64], *, column: str, source: str, where: RowPosition
) -> npt.NDArray[np.int64]:
    bad = ~np.isfinite(seconds)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: column {column!r} has a non-finite time at {where(first)}")
    return np.floor(seconds).astype(np.int64)


def _epoch_seconds(times: pd.Series[Any]) -> npt.NDArray[np.int64]:
    """Seconds since the epoch whatever the datetime unit; naive datetimes are taken as UTC."""
    if getattr(times.dt, "tz", None) is None:
        times = times.dt.tz_localize("UTC")
    seconds = (times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return np.asarray(seconds.to_numpy(), dtype=np.int64)
