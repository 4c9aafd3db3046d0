"""The A/B report: per-group summaries, comparisons with the control, SRM, and the series over time; three renderers.

``build_report(ReportInput) -> Report`` is pure (DataFrames in, frozen dataclasses out); the SQL that fills
``ReportInput`` lives with the writer, and the renderers (``to_table``, ``to_json``, ``plot_ctr``) only read a
``Report``. Users are the unit of analysis throughout (see ``feedback.stats``): a user's rows over periods and
requests are summed before any variance is taken.

The series is cumulative per time bucket (:data:`BUCKETS`: a minute, an hour or a UTC day), so that a one-minute
demo and a month-long experiment both get a readable curve; ``period`` is always the bucket's start in UTC.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table
from rich.text import Text

from feedback.stats import (
    SRM_THRESHOLD,
    Estimate,
    FloatArray,
    Moments,
    always_valid_interval,
    compare,
    mean_estimate,
    mixture_rho,
    ratio_estimate,
    srm_test,
)
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


# --- input cleaning ---------------------------------------------------------------------------------------------


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


def parse_bucket(value: str) -> Bucket:
    """``value`` as a :data:`Bucket`; the one check every path (CLI, SQL, report) goes through."""
    if value not in BUCKETS:
        raise ReportError(f"bucket must be one of {', '.join(BUCKETS)}; got {value!r}")
    return value


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


def _clean_series(series: pd.DataFrame, bucket: Bucket) -> pd.DataFrame:
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


def _clean_latency(latency: pd.DataFrame) -> pd.DataFrame:
    _require_columns(latency, LATENCY_COLUMNS, "latency input")
    values = pd.to_numeric(latency["latency_ms"], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(values)
    return pd.DataFrame({"group": latency["group"].astype(str).to_numpy()[keep], "latency_ms": values[keep]})


def _group_names(series: pd.DataFrame, latency: pd.DataFrame, expected_shares: Mapping[str, float] | None) -> list[str]:
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


# --- estimation -------------------------------------------------------------------------------------------------


def _interval(est: Estimate, alpha: float) -> Interval:
    low, high = est.interval(alpha)
    return Interval(float(est.value), float(low), float(high))


def _group_estimates(users: pd.DataFrame) -> dict[str, Estimate]:
    x = users["impressions"].to_numpy(dtype=np.float64)
    y = users["clicks"].to_numpy(dtype=np.float64)
    s = users["skips"].to_numpy(dtype=np.float64)
    seen = x > 0
    per_user = np.divide(y, x, out=np.zeros_like(y), where=seen)
    return {
        "ctr": ratio_estimate(Moments.of(x, y)),
        "ctr_per_user": mean_estimate(per_user, where=seen),
        "skip_rate": ratio_estimate(Moments.of(x, s)),
    }


def _percentiles(values: FloatArray) -> tuple[float, float, float]:
    if values.size == 0:
        return math.nan, math.nan, math.nan
    p50, p95, p99 = np.percentile(values, [50.0, 95.0, 99.0])
    return float(p50), float(p95), float(p99)


def _why_not_estimable(g: GroupSummary, metric: str) -> str | None:
    if g.users == 0:
        return f"group {g.group} has no users"
    if g.impressions == 0:
        return f"group {g.group} has no impressions"
    est = g.metric(metric)
    if math.isnan(est.low):
        return f"group {g.group} has too few users for a variance"
    return None


def _cumulative_ctr_moments(series: pd.DataFrame, groups: list[str], periods: pd.DatetimeIndex) -> dict[str, Moments]:
    """Per group, the moments of users' cumulative (impressions, clicks) at the end of each period, in O(rows).

    When a user's running totals move from (px, py) to (cx, cy), the sums of squares move by cx^2 - px^2 and so
    on, and the user count moves by one in the user's first period; summing these increments per period and taking
    a running total gives the moments of everyone's totals so far.
    """
    per = series.groupby(["group", "user_id", "period"], sort=True)[["impressions", "clicks"]].sum().reset_index()
    by_user = per.groupby(["group", "user_id"], sort=False)
    x = per["impressions"].to_numpy(dtype=np.float64)
    y = per["clicks"].to_numpy(dtype=np.float64)
    cx = by_user["impressions"].cumsum().to_numpy(dtype=np.float64)
    cy = by_user["clicks"].cumsum().to_numpy(dtype=np.float64)
    px, py = cx - x, cy - y
    inc = pd.DataFrame(
        {
            "group": per["group"].to_numpy(),
            "period": per["period"].to_numpy(),
            "n": (by_user.cumcount() == 0).to_numpy(dtype=np.float64),
            "sx": x,
            "sy": y,
            "sxx": cx * cx - px * px,
            "syy": cy * cy - py * py,
            "sxy": cx * cy - px * py,
        }
    )
    totals = inc.groupby(["group", "period"]).sum()
    fields = ("n", "sx", "sy", "sxx", "syy", "sxy")
    out: dict[str, Moments] = {}
    for g in groups:
        if g in totals.index.get_level_values("group"):
            per_period = totals.xs(g, level="group").reindex(periods, fill_value=0.0)
            cols = [np.cumsum(per_period[f].to_numpy(dtype=np.float64)) for f in fields]
        else:
            cols = [np.zeros(len(periods)) for _ in fields]
        out[g] = Moments(*cols)
    return out


def build_report(
    data: ReportInput,
    *,
    control: str = "A",
    alpha: float = 0.05,
    expected_shares: Mapping[str, float] | None = None,
    planned_users: int = DEFAULT_PLANNED_USERS,
    srm_threshold: float = SRM_THRESHOLD,
) -> Report:
    """Summaries per group, every group compared with ``control``, the SRM check and the cumulative series per
    ``data.bucket``.

    ``expected_shares`` (group -> share, normalized) names the experiment's groups; a group there with no data is
    reported with zero users (and trips the SRM check). Without it, the groups are those in the data, with equal
    shares. ``planned_users`` tunes the always-valid interval (both groups of one comparison together) and must
    be fixed before the data are seen. Raises :class:`ReportError` when no meaningful report is possible.
    """
    if not 0.0 < alpha < 1.0:
        raise ReportError(f"alpha must be in (0, 1), got {alpha}")
    if planned_users <= 0:
        raise ReportError(f"planned_users must be positive, got {planned_users}")
    bucket = parse_bucket(data.bucket)
    series = _clean_series(data.series, bucket)
    latency = _clean_latency(data.latency)
    groups = _group_names(series, latency, expected_shares)
    if control not in groups:
        raise ReportError(f"control group {control!r} is not among the groups {groups}")
    warnings: list[str] = []

    users = series.groupby(["group", "user_id"], sort=True)[list(COUNT_COLUMNS)].sum().reset_index()
    multi = int((users.groupby("user_id")["group"].nunique() > 1).sum())
    if multi:
        warnings.append(f"{multi} users appear in more than one group; each (group, user) pair counts as one unit")
    over = int((users["clicks"] > users["impressions"]).sum())
    if over:
        warnings.append(f"{over} users have more clicks than impressions (feedback without its impression?)")

    estimates: dict[str, dict[str, Estimate]] = {}
    summaries: list[GroupSummary] = []
    for g in groups:
        u = users[users["group"] == g]
        est = _group_estimates(u)
        estimates[g] = est
        p50, p95, p99 = _percentiles(latency.loc[latency["group"] == g, "latency_ms"].to_numpy(dtype=np.float64))
        summary = GroupSummary(
            group=g,
            users=len(u),
            impressions=int(u["impressions"].sum()),
            clicks=int(u["clicks"].sum()),
            skips=int(u["skips"].sum()),
            ctr=_interval(est["ctr"], alpha),
            ctr_per_user=_interval(est["ctr_per_user"], alpha),
            skip_rate=_interval(est["skip_rate"], alpha),
            latency_count=int((latency["group"] == g).sum()),
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
        )
        summaries.append(summary)
        if summary.users == 0:
            warnings.append(f"group {g} has no users")
        elif summary.impressions == 0:
            warnings.append(f"group {g} has users but no impressions")
    by_name = {s.group: s for s in summaries}

    comparisons: list[Comparison] = []
    for t in groups:
        if t == control:
            continue
        for metric in METRICS:
            d = compare(estimates[control][metric], estimates[t][metric], alpha)
            cs = always_valid_interval(d.estimate, d.se**2, d.n, alpha=alpha, planned_n=planned_users)
            note = _why_not_estimable(by_name[control], metric) or _why_not_estimable(by_name[t], metric)
            p = float(d.p_value)
            comparisons.append(
                Comparison(
                    metric=metric,
                    control=control,
                    treatment=t,
                    control_value=float(estimates[control][metric].value),
                    treatment_value=float(estimates[t][metric].value),
                    difference=Interval(float(d.estimate), float(d.ci_low), float(d.ci_high)),
                    p_value=p,
                    lift=Interval(float(d.lift), float(d.lift_ci_low), float(d.lift_ci_high)),
                    always_valid=Interval(float(d.estimate), float(cs.low), float(cs.high)),
                    always_valid_p_value=float(cs.p_value),
                    significant=bool(p < alpha),
                    note=note,
                )
            )

    srm: SRMCheck | None = None
    if len(groups) < 2:
        warnings.append(f"only one group ({groups[0]}): nothing to compare and no SRM check")
    else:
        shares = [1.0] * len(groups) if expected_shares is None else [float(expected_shares[g]) for g in groups]
        total = sum(shares)
        observed = [by_name[g].users for g in groups]
        res = srm_test(observed, shares, srm_threshold)
        srm = SRMCheck(
            groups=tuple(groups),
            observed=tuple(observed),
            expected_shares=tuple(s / total for s in shares),
            chi2=float(res.chi2),
            df=res.df,
            p_value=float(res.p_value),
            flagged=bool(res.flagged),
            threshold=srm_threshold,
        )
        if srm.flagged:
            warnings.append(
                f"sample ratio mismatch (p = {srm.p_value:.2g} < {srm_threshold}): the split is not the designed one; "
                "do not trust the comparisons until the assignment is explained"
            )

    periods = pd.DatetimeIndex(sorted(series["period"].unique()))
    cum = _cumulative_ctr_moments(series, groups, periods)
    starts = [p.to_pydatetime().replace(tzinfo=dt.UTC) for p in periods]
    series_groups: list[SeriesGroupPoint] = []
    cum_est = {g: ratio_estimate(cum[g]) for g in groups}
    for g in groups:
        low, high = cum_est[g].interval(alpha)
        for i, start in enumerate(starts):
            series_groups.append(
                SeriesGroupPoint(
                    period=start,
                    group=g,
                    users=int(cum[g].n[i]),
                    impressions=int(cum[g].sx[i]),
                    clicks=int(cum[g].sy[i]),
                    ctr=Interval(float(cum_est[g].value[i]), float(low[i]), float(high[i])),
                )
            )
    series_differences: list[SeriesDifferencePoint] = []
    for t in groups:
        if t == control:
            continue
        d = compare(cum_est[control], cum_est[t], alpha)
        cs = always_valid_interval(d.estimate, d.se**2, d.n, alpha=alpha, planned_n=planned_users)
        for i, start in enumerate(starts):
            series_differences.append(
                SeriesDifferencePoint(
                    period=start,
                    treatment=t,
                    users=int(d.n[i]),
                    difference=Interval(float(d.estimate[i]), float(d.ci_low[i]), float(d.ci_high[i])),
                    always_valid=Interval(float(d.estimate[i]), float(cs.low[i]), float(cs.high[i])),
                )
            )

    return Report(
        control=control,
        alpha=alpha,
        planned_users=planned_users,
        rho=mixture_rho(planned_users, alpha),
        groups=tuple(summaries),
        comparisons=tuple(comparisons),
        srm=srm,
        bucket=bucket,
        series_groups=tuple(series_groups),
        series_differences=tuple(series_differences),
        warnings=tuple(warnings),
    )


# --- renderers --------------------------------------------------------------------------------------------------


def _num(x: float) -> float | None:
    """JSON has no NaN: a value that cannot be estimated is ``null``."""
    return x if math.isfinite(x) else None


def _interval_json(i: Interval) -> dict[str, float | None]:
    return {"value": _num(i.value), "ci_low": _num(i.low), "ci_high": _num(i.high)}


def to_json(report: Report) -> dict[str, Any]:
    """A JSON-serialisable dict with stable keys; NaN becomes ``null`` (``json.dumps(..., allow_nan=False)`` works).

    Top-level keys: ``control``, ``alpha``, ``sequential``, ``groups``, ``comparisons``, ``srm``, ``series``,
    ``warnings``. ``series`` is ``{"bucket": "minute" | "hour" | "day", "groups": [...], "differences": [...]}``;
    each point's ``period`` is the start of its bucket in ISO 8601 UTC (``2026-03-01T12:03:00+00:00``), whatever
    the bucket, and its figures are cumulative up to the end of that bucket.
    """
    return {
        "control": report.control,
        "alpha": report.alpha,
        "sequential": {"planned_users": report.planned_users, "rho": report.rho},
        "groups": [
            {
                "group": g.group,
                "users": g.users,
                "impressions": g.impressions,
                "clicks": g.clicks,
                "skips": g.skips,
                "ctr": _interval_json(g.ctr),
                "ctr_per_user": _interval_json(g.ctr_per_user),
                "skip_rate": _interval_json(g.skip_rate),
                "latency_ms": {
                    "count": g.latency_count,
                    "p50": _num(g.latency_p50_ms),
                    "p95": _num(g.latency_p95_ms),
                    "p99": _num(g.latency_p99_ms),
                },
            }
            for g in report.groups
        ],
        "comparisons": [
            {
                "metric": c.metric,
                "control": c.control,
                "treatment": c.treatment,
                "control_value": _num(c.control_value),
                "treatment_value": _num(c.treatment_value),
                "difference": _interval_json(c.difference),
                "p_value": _num(c.p_value),
                "significant": c.significant,
                "relative_lift": _interval_json(c.lift),
                "always_valid": _interval_json(c.always_valid),
                "always_valid_p_value": _num(c.always_valid_p_value),
                "note": c.note,
            }
            for c in report.comparisons
        ],
        "srm": None
        if report.srm is None
        else {
            "groups": list(report.srm.groups),
            "observed": list(report.srm.observed),
            "expected_shares": list(report.srm.expected_shares),
            "chi2": _num(report.srm.chi2),
            "df": report.srm.df,
            "p_value": _num(report.srm.p_value),
            "flagged": report.srm.flagged,
            "threshold": report.srm.threshold,
        },
        "series": {
            "bucket": report.bucket,
            "groups": [
                {
                    "period": p.period.isoformat(),
                    "group": p.group,
                    "users": p.users,
                    "impressions": p.impressions,
                    "clicks": p.clicks,
                    "ctr": _interval_json(p.ctr),
                }
                for p in report.series_groups
            ],
            "differences": [
                {
                    "period": p.period.isoformat(),
                    "treatment": p.treatment,
                    "users": p.users,
                    "difference": _interval_json(p.difference),
                    "always_valid": _interval_json(p.always_valid),
                }
                for p in report.series_differences
            ],
        },
        "warnings": list(report.warnings),
    }


def _pct(x: float, digits: int = 2) -> str:
    return f"{100.0 * x:.{digits}f}%" if math.isfinite(x) else "-"


def _pct_interval(i: Interval, digits: int = 2, *, signed: bool = False, unit: str = "%") -> str:
    """``8.40% [6.58, 10.22]``; differences of rates read better in percentage points (``unit=" pp"``)."""
    if not math.isfinite(i.value):
        return "-"
    sign = "+" if signed else ""
    value = f"{100.0 * i.value:{sign}.{digits}f}{unit}"
    if not (math.isfinite(i.low) and math.isfinite(i.high)):
        return value
    return f"{value} [{100.0 * i.low:{sign}.{digits}f}, {100.0 * i.high:{sign}.{digits}f}]"


def _ms(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else "-"


def _p(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def summary_table(report: Report) -> Table:
    """One row per group: counts, the three metrics with their intervals, latency percentiles."""
    level = round(100 * (1 - report.alpha))
    table = Table(title=f"A/B groups ({level}% intervals, users as the unit)")
    for name in ("group", "users", "impressions", "clicks"):
        table.add_column(name, justify="left" if name == "group" else "right")
    for name in (*METRIC_LABELS.values(), "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(name, justify="right")
    for g in report.groups:
        table.add_row(
            g.group + (" (control)" if g.group == report.control else ""),
            f"{g.users:,}",
            f"{g.impressions:,}",
            f"{g.clicks:,}",
            _pct_interval(g.ctr),
            _pct_interval(g.ctr_per_user),
            _pct_interval(g.skip_rate),
            _ms(g.latency_p50_ms),
            _ms(g.latency_p95_ms),
            _ms(g.latency_p99_ms),
        )
    return table


def comparison_table(report: Report) -> Table:
    """One row per (treatment, metric): difference, lift, p-value, and the always-valid interval."""
    level = round(100 * (1 - report.alpha))
    title = f"Treatment - control ({report.control}); always-valid interval tuned for {report.planned_users:,} users"
    table = Table(title=title)
    for name in ("treatment", "metric"):
        table.add_column(name)
    for name in (f"difference [{level}% CI]", "relative lift", "p-value", "always-valid"):
        table.add_column(name, justify="right")
    notes = any(c.note for c in report.comparisons)
    if notes:
        table.add_column("note")
    for c in report.comparisons:
        cells: list[str | Text] = [
            c.treatment,
            METRIC_LABELS[c.metric],
            _pct_interval(c.difference, 2, signed=True, unit=" pp"),
            _pct_interval(c.lift, 1, signed=True),
            Text(_p(c.p_value), style="bold" if c.significant else ""),
            _pct_interval(c.always_valid, 2, signed=True, unit=" pp"),
        ]
        if notes:
            cells.append(c.note or "")
        table.add_row(*cells)
    return table


def to_table(report: Report) -> Table:
    """The whole report as one rich Table (a grid holding the group table, the comparisons, SRM and warnings)."""
    grid = Table.grid(padding=(1, 0))
    grid.add_column()
    grid.add_row(summary_table(report))
    if report.comparisons:
        grid.add_row(comparison_table(report))
    if report.srm is not None:
        s = report.srm
        rows = zip(s.groups, s.observed, s.expected_shares, strict=True)
        split = ", ".join(f"{g} {n:,} (expected {100 * sh:.0f}%)" for g, n, sh in rows)
        verdict = Text("MISMATCH", style="bold red") if s.flagged else Text("ok", style="green")
        grid.add_row(
            Text.assemble(
                "Sample ratio: ", split, f"; chi2 = {s.chi2:.2f} (df {s.df}), p = {_p(s.p_value)} -> ", verdict
            )
        )
    for w in report.warnings:
        grid.add_row(Text(f"warning: {w}", style="yellow"))
    return grid


def _point_with_bar(ax: Axes, x: dt.datetime, i: Interval, **style: Any) -> None:
    """One estimate with its interval as an error bar: with a single bucket a band has no width to show."""
    if not math.isfinite(i.value):
        return
    yerr = None
    if math.isfinite(i.low) and math.isfinite(i.high):
        yerr = [[100 * max(i.value - i.low, 0.0)], [100 * max(i.high - i.value, 0.0)]]
    ax.errorbar(np.array([x]), [100 * i.value], yerr=yerr, fmt="o", capsize=5, **style)


def ctr_figure(report: Report) -> Figure:
    """Cumulative CTR per group by bucket with its interval (top) and, per treatment, the CTR difference with its
    fixed-horizon interval and the always-valid interval around zero (bottom); Agg canvas, no pyplot state.

    Over several buckets the intervals are bands (the fixed-horizon one of the difference dashed); with one bucket
    they are error bars (the always-valid one wide and pale), the groups side by side. The x-axis spans the data
    padded by one bucket, with ticks no finer than the bucket.
    """
    fig = Figure(figsize=(9.0, 7.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    level = round(100 * (1 - report.alpha))
    width = BUCKET_WIDTH[report.bucket]
    periods = sorted({p.period for p in report.series_groups})
    single = len(periods) == 1
    colors = {g.group: f"C{k}" for k, g in enumerate(report.groups)}  # a difference takes its treatment's colour

    def dodge(k: int, n: int) -> dt.timedelta:
        return width * 0.1 * (k - (n - 1) / 2) if single else dt.timedelta(0)

    for k, g in enumerate(report.groups):
        gpts = [p for p in report.series_groups if p.group == g.group]
        color = colors[g.group]
        if single:
            _point_with_bar(top, gpts[0].period + dodge(k, len(report.groups)), gpts[0].ctr, color=color, label=g.group)
            continue
        x = [p.period for p in gpts]
        value = np.array([p.ctr.value for p in gpts])
        top.plot(x, 100 * value, marker="o", markersize=3, color=color, label=g.group)
        low, high = np.array([p.ctr.low for p in gpts]), np.array([p.ctr.high for p in gpts])
        top.fill_between(x, 100 * low, 100 * high, color=color, alpha=0.2, linewidth=0)
    top.set_ylabel("cumulative CTR per impression (%)")
    top.set_title(f"cumulative CTR per {report.bucket} with {level}% intervals (users as the unit)")
    if top.get_legend_handles_labels()[0]:  # with one bucket, a group with no estimate draws nothing
        top.legend(loc="best")
    if report.series_differences:
        treatments = list(dict.fromkeys(p.treatment for p in report.series_differences))
        for k, t in enumerate(treatments):
            pts = [p for p in report.series_differences if p.treatment == t]
            color = colors[t]
            label = f"{t} - {report.control}"
            if single:
                x0 = pts[0].period + dodge(k, len(treatments))
                av = pts[0].always_valid
                if math.isfinite(av.low) and math.isfinite(av.high):
                    bottom.vlines(x0, 100 * av.low, 100 * av.high, color=color, alpha=0.25, linewidth=12)
                _point_with_bar(bottom, x0, pts[0].difference, color=color, label=label)
                continue
            x = [p.period for p in pts]
            diff = np.array([p.difference.value for p in pts])
            bottom.plot(x, 100 * diff, marker="o", markersize=3, color=color, label=label)
            av_low = np.array([p.always_valid.low for p in pts])
            av_high = np.array([p.always_valid.high for p in pts])
            bottom.fill_between(x, 100 * av_low, 100 * av_high, color=color, alpha=0.2, linewidth=0)
            for bound in ([p.difference.low for p in pts], [p.difference.high for p in pts]):
                bottom.plot(x, 100 * np.array(bound), color=color, linestyle="--", linewidth=0.8)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        # The first buckets' always-valid band is very wide by design; frame the later two thirds of the series.
        cut = periods[len(periods) // 3]
        bounds = [
            abs(b)
            for p in report.series_differences
            if p.period >= cut
            for b in (p.always_valid.low, p.always_valid.high, p.difference.value)
        ]
        finite = [b for b in bounds if math.isfinite(b)]
        if finite and max(finite) > 0:
            limit = 100 * 1.15 * max(finite)
            bottom.set_ylim(-limit, limit)
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(loc="best")
        how = "wide pale bar) and fixed-horizon interval (error bar" if single else "shaded) and fixed-horizon (dashed"
        bottom.set_title(f"difference: always-valid interval ({how}), {level}%")
    else:
        bottom.text(0.5, 0.5, "no comparison (one group)", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylabel("CTR difference (points)")
    bottom.set_xlabel(f"{report.bucket} (UTC, start of the bucket)")
    bottom.set_xlim(periods[0] - width, periods[-1] + width)
    # Padded by a bucket the axis spans at least two, so two ticks at least keep the ticks at the bucket or coarser.
    locator = mdates.AutoDateLocator(tz=dt.UTC, minticks=2, maxticks=10)  # type: ignore[no-untyped-call]
    bottom.xaxis.set_major_locator(locator)
    # Concise labels (the date or year once, in the corner), but days as "Mar 01" rather than a bare "01".
    formats = ["%Y", "%b", "%b %d", "%H:%M", "%H:%M", "%S.%f"]
    zero_formats = ["", "%Y", "%b %d", "%b %d", "%H:%M", "%H:%M"]
    formatter = mdates.ConciseDateFormatter(locator, tz=dt.UTC, formats=formats, zero_formats=zero_formats)  # type: ignore[no-untyped-call]
    bottom.xaxis.set_major_formatter(formatter)
    return fig


def plot_ctr(report: Report, path: str | Path) -> Path:
    """Writes :func:`ctr_figure` as a PNG at ``path`` (parents created) and returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ctr_figure(report).savefig(out, format="png")
    return out


__all__ = [
    "BUCKETS",
    "BUCKET_WIDTH",
    "DEFAULT_PLANNED_USERS",
    "LATENCY_COLUMNS",
    "METRICS",
    "SERIES_COLUMNS",
    "Bucket",
    "Comparison",
    "GroupSummary",
    "Interval",
    "Report",
    "ReportError",
    "ReportInput",
    "SRMCheck",
    "SeriesDifferencePoint",
    "SeriesGroupPoint",
    "build_report",
    "comparison_table",
    "ctr_figure",
    "parse_bucket",
    "plot_ctr",
    "summary_table",
    "to_json",
    "to_table",
]
