"""The report as a JSON document with stable keys (what ``recsys ab-report --json`` writes)."""

from __future__ import annotations

import math
from typing import Any

from feedback.report.model import Interval, Report


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
