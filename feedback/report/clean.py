"""Input cleaning: the report's DataFrames checked and normalised (periods floored to UTC buckets, whole counts),
each problem raised as a one-line :class:`ReportError`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from feedback.report.model import COUNT_COLUMNS, LATENCY_COLUMNS, SERIES_COLUMNS, Bucket, ReportError


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportError(f"{what} lacks columns {missing}; expected {list(columns)}")


def _counts(series: pd.Series, name: str) -> np.ndarray[Any, np.dtype[np.int64]]:
    try:
        values = pd.to_numeric(series).to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ReportError(f"column {name!r} must be numeric counts") from exc
    bad = ~np.isfinite(values) | (values < 0) | (values != np.floor(values))
    if bad.any():
        raise ReportError(f"column {name!r} must hold non-negative whole counts; {int(bad.sum())} rows do not")
    return values.astype(np.int64)


_FLOOR: dict[Bucket, str] = {"minute": "min", "hour": "h", "day": "D"}


def _periods(series: pd.Series, bucket: Bucket) -> pd.Series:
    """Naive UTC timestamps floored to the bucket."""
    try:
        periods = pd.to_datetime(series)
    except (TypeError, ValueError) as exc:
        raise ReportError("column 'period' must hold dates or timestamps") from exc
    if periods.isna().any():
        raise ReportError("column 'period' has missing values")
    if periods.dt.tz is not None:
        periods = periods.dt.tz_convert("UTC").dt.tz_localize(None)
    return periods.dt.floor(_FLOOR[bucket])


def clean_series(series: pd.DataFrame, bucket: Bucket) -> pd.DataFrame:
    _require_columns(series, SERIES_COLUMNS, "series input")
    if series.empty:
        raise ReportError("no impressions: the series input is empty")
    if series["group"].isna().any() or series["user_id"].isna().any():
        raise ReportError("columns 'group' and 'user_id' must not be missing")
    out = pd.DataFrame(
        {
            "period": _periods(series["period"], bucket).to_numpy(),
            "group": series["group"].astype(str).to_numpy(),
            "user_id": series["user_id"].astype(str).to_numpy(),
        }
    )
    for col in COUNT_COLUMNS:
        out[col] = _counts(series[col], col)
    return out


def clean_latency(latency: pd.DataFrame) -> pd.DataFrame:
    _require_columns(latency, LATENCY_COLUMNS, "latency input")
    values = pd.to_numeric(latency["latency_ms"], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(values)
    return pd.DataFrame({"group": latency["group"].astype(str).to_numpy()[keep], "latency_ms": values[keep]})


def group_names(series: pd.DataFrame, latency: pd.DataFrame, expected_shares: Mapping[str, float] | None) -> list[str]:
    seen = set(series["group"].unique())
    if expected_shares is None:
        groups = sorted(seen)
    else:
        bad = {g: s for g, s in expected_shares.items() if not (isinstance(s, int | float) and s > 0)}
        if bad or not expected_shares:
            raise ReportError(f"expected_shares must map each group to a positive share, got {dict(expected_shares)}")
        groups = sorted(expected_shares)
        unknown = sorted(seen - set(groups))
        if unknown:
            raise ReportError(f"groups {unknown} are in the data but not in the experiment's shares {groups}")
    stray = sorted(set(latency["group"].unique()) - set(groups))
    if stray:
        raise ReportError(f"latency rows name groups {stray} that have no impressions rows")
    return groups
