"""The report's series as a PNG (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from feedback.report.model import BUCKET_WIDTH, Interval, Report


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
