"""What the A/B report reads and returns: the time buckets, the input columns, and frozen result dataclasses.

Pure data: pandas for the input frames, nothing else; every other module of :mod:`feedback.report` works on these.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from recsys.core.errors import RecsysError

Bucket = Literal["minute", "hour", "day"]
BUCKETS: tuple[Bucket, ...] = ("minute", "hour", "day")
"""The time buckets of the series, as PostgreSQL's ``date_trunc`` names them."""
BUCKET_WIDTH: dict[Bucket, dt.timedelta] = {
    "minute": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
}
SERIES_COLUMNS = ("period", "group", "user_id", "impressions", "clicks", "skips")
"""One row per (period, group, user): that user's impressions in that bucket, how many were clicked, how many
skipped."""
LATENCY_COLUMNS = ("group", "latency_ms")
"""One row per impression: the group and the inference latency the gateway recorded (NULLs are dropped)."""
COUNT_COLUMNS = ("impressions", "clicks", "skips")

METRICS = ("ctr", "ctr_per_user", "skip_rate")
METRIC_LABELS = {"ctr": "CTR / impression", "ctr_per_user": "CTR / user", "skip_rate": "skip rate"}
DEFAULT_PLANNED_USERS = 10_000
"""Total users (control + one treatment) at which the always-valid interval is tightest; set per experiment."""


class ReportError(RecsysError, ValueError):
    """The input cannot give a meaningful report (missing columns, bad counts, unknown control or group)."""


@dataclass(frozen=True)
class ReportInput:
    """What the report reads from PostgreSQL, as two DataFrames and the time bucket of the series.

    ``series`` has :data:`SERIES_COLUMNS`. ``period`` is a date or a timestamp (tz-aware ones are taken in UTC,
    naive ones are UTC), floored to ``bucket``, so raw timestamps work as well as the SQL's truncated ones;
    ``clicks`` counts impressions with a click and ``skips`` impressions with a skip, so CTR and skip rate are
    per impression. Several rows for one (period, group, user) are summed. ``latency`` has :data:`LATENCY_COLUMNS`.
    """

    series: pd.DataFrame
    latency: pd.DataFrame
    bucket: Bucket = "day"


@dataclass(frozen=True)
class Interval:
    """A value with its two-sided interval; NaN where it cannot be estimated."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class GroupSummary:
    group: str
    users: int
    impressions: int
    clicks: int
    skips: int
    ctr: Interval
    ctr_per_user: Interval
    skip_rate: Interval
    latency_count: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float

    def metric(self, name: str) -> Interval:
        if name not in METRICS:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
        value: Interval = getattr(self, name)
        return value


@dataclass(frozen=True)
class Comparison:
    """One metric, treatment minus control. ``difference`` is the fixed-horizon interval (valid at one planned
    look); ``always_valid`` is the confidence sequence (valid at every look). ``lift`` is relative."""

    metric: str
    control: str
    treatment: str
    control_value: float
    treatment_value: float
    difference: Interval
    p_value: float
    lift: Interval
    always_valid: Interval
    always_valid_p_value: float
    significant: bool
    note: str | None


@dataclass(frozen=True)
class SRMCheck:
    groups: tuple[str, ...]
    observed: tuple[int, ...]
    expected_shares: tuple[float, ...]
    chi2: float
    df: int
    p_value: float
    flagged: bool
    threshold: float


@dataclass(frozen=True)
class SeriesGroupPoint:
    """Cumulative CTR per impression of one group up to the end of the bucket starting at ``period`` (UTC)."""

    period: dt.datetime
    group: str
    users: int
    impressions: int
    clicks: int
    ctr: Interval


@dataclass(frozen=True)
class SeriesDifferencePoint:
    """Cumulative CTR difference (treatment - control) up to the end of the bucket starting at ``period`` (UTC),
    fixed-horizon and always-valid."""

    period: dt.datetime
    treatment: str
    users: int
    difference: Interval
    always_valid: Interval


@dataclass(frozen=True)
class Report:
    control: str
    alpha: float
    planned_users: int
    rho: float
    groups: tuple[GroupSummary, ...]
    comparisons: tuple[Comparison, ...]
    srm: SRMCheck | None
    bucket: Bucket
    series_groups: tuple[SeriesGroupPoint, ...]
    series_differences: tuple[SeriesDifferencePoint, ...]
    warnings: tuple[str, ...]

    def group(self, name: str) -> GroupSummary:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(f"no group {name!r} in the report")

    def comparison(self, treatment: str, metric: str = "ctr") -> Comparison:
        for c in self.comparisons:
            if c.treatment == treatment and c.metric == metric:
                return c
        raise KeyError(f"no comparison of {metric!r} for {treatment!r}")


def parse_bucket(value: str) -> Bucket:
    """``value`` as a :data:`Bucket`; the one check every path (CLI, SQL, report) goes through."""
    if value not in BUCKETS:
        raise ReportError(f"bucket must be one of {', '.join(BUCKETS)}; got {value!r}")
    return value
