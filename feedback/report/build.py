"""``build_report(ReportInput) -> Report``: per-group summaries, comparisons with the control, the SRM check and
the cumulative series per time bucket. Pure (DataFrames in, frozen dataclasses out); the statistics are
:mod:`feedback.stats`. Users are the unit of analysis throughout: a user's rows over periods and requests are
summed before any variance is taken."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from feedback.report.clean import clean_latency, clean_series, group_names
from feedback.report.model import (
    COUNT_COLUMNS,
    DEFAULT_PLANNED_USERS,
    METRICS,
    Comparison,
    GroupSummary,
    Interval,
    Report,
    ReportError,
    ReportInput,
    SeriesDifferencePoint,
    SeriesGroupPoint,
    SRMCheck,
    parse_bucket,
)
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
    series = clean_series(data.series, bucket)
    latency = clean_latency(data.latency)
    groups = group_names(series, latency, expected_shares)
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
