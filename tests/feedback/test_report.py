"""The A/B report on a small hand-built experiment: numbers against direct computation, JSON, table, PNG, edges."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import io
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import pytest
from matplotlib import dates as mdates
from matplotlib import image as mpimg
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from rich.console import Console
from scipy import stats as sps

from feedback.queries import load_report_input
from feedback.report import (
    BUCKET_WIDTH,
    SERIES_COLUMNS,
    Bucket,
    Report,
    ReportError,
    ReportInput,
    build_report,
    parse_bucket,
    to_json,
)
from feedback.report.plot import ctr_figure, plot_ctr
from recsys.ab_report import to_table

D1, D2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
P1, P2 = (dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC) for d in (D1, D2))  # their periods, as reported
Z = float(sps.norm.ppf(0.975))

Row = tuple[object, str, str, int, int, int]  # (period, group, user, impressions, clicks, skips)
Vec = np.ndarray[tuple[int], np.dtype[np.float64]]

ROWS: list[Row] = [
    (D1, "A", "a1", 4, 1, 1),
    (D2, "A", "a1", 2, 1, 0),
    (D1, "A", "a2", 3, 0, 2),
    (D2, "A", "a3", 5, 2, 1),
    (D1, "B", "b1", 2, 1, 0),
    (D2, "B", "b1", 2, 1, 1),
    (D1, "B", "b2", 6, 1, 2),
    (D2, "B", "b3", 1, 0, 0),
    (D2, "B", "b4", 3, 2, 0),
]
LATENCY = {"A": [5.0, 7.0, 6.0, 20.0, 8.0], "B": [4.0, 4.5, 30.0, 5.0]}


def _input(
    rows: Sequence[Row] = ROWS, latency: dict[str, list[float]] = LATENCY, bucket: Bucket = "day"
) -> ReportInput:
    lat = pd.DataFrame(
        {"group": [g for g, v in latency.items() for _ in v], "latency_ms": [x for v in latency.values() for x in v]}
    )
    return ReportInput(series=pd.DataFrame(rows, columns=list(SERIES_COLUMNS)), latency=lat, bucket=bucket)


def _per_user(group: str, rows: Sequence[Row] = ROWS) -> tuple[Vec, Vec, Vec]:
    totals: dict[str, list[int]] = {}
    for _, g, u, i, c, s in rows:
        if g == group:
            t = totals.setdefault(u, [0, 0, 0])
            t[0] += i
            t[1] += c
            t[2] += s
    arr = np.array(list(totals.values()), dtype=float)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def _delta(x: Vec, y: Vec) -> tuple[float, float]:
    """Ratio and its textbook delta-method variance (written out independently of feedback.stats)."""
    n, mx, my = len(x), x.mean(), y.mean()
    c = np.cov(x, y, ddof=1)
    return y.sum() / x.sum(), (c[1, 1] / mx**2 - 2 * my * c[0, 1] / mx**3 + my**2 * c[0, 0] / mx**4) / n


@pytest.fixture(scope="module")
def report() -> Report:
    return build_report(_input(), planned_users=1_000)


def test_group_numbers_match_direct_computation(report: Report) -> None:
    assert [g.group for g in report.groups] == ["A", "B"]
    for name in ("A", "B"):
        g = report.group(name)
        x, y, s = _per_user(name)
        assert (g.users, g.impressions, g.clicks, g.skips) == (len(x), x.sum(), y.sum(), s.sum())
        ctr, var = _delta(x, y)
        assert g.ctr.value == pytest.approx(ctr)
        assert (g.ctr.low, g.ctr.high) == pytest.approx((ctr - Z * math.sqrt(var), ctr + Z * math.sqrt(var)))
        skip, skip_var = _delta(x, s)
        assert g.skip_rate.value == pytest.approx(skip)
        assert g.skip_rate.high == pytest.approx(skip + Z * math.sqrt(skip_var))
        per_user = y / x
        half = Z * per_user.std(ddof=1) / math.sqrt(len(x))
        assert g.ctr_per_user.value == pytest.approx(per_user.mean())
        assert g.ctr_per_user.low == pytest.approx(per_user.mean() - half)
        p50, p95, p99 = np.percentile(LATENCY[name], [50, 95, 99])
        assert (g.latency_p50_ms, g.latency_p95_ms, g.latency_p99_ms) == pytest.approx((p50, p95, p99))
        assert g.latency_count == len(LATENCY[name])
    assert report.group("A").ctr.value == pytest.approx(4 / 14)


def test_comparison_srm_and_series_match_direct_computation(report: Report) -> None:
    (ca, va), (cb, vb) = _delta(*_per_user("A")[:2]), _delta(*_per_user("B")[:2])
    c = report.comparison("B", "ctr")
    se = math.sqrt(va + vb)
    assert c.difference.value == pytest.approx(cb - ca)
    assert c.difference.low == pytest.approx(cb - ca - Z * se)
    assert c.p_value == pytest.approx(2 * sps.norm.sf(abs(cb - ca) / se))
    assert c.lift.value == pytest.approx(cb / ca - 1)
    assert c.significant == (c.p_value < 0.05)
    assert c.always_valid.low < c.difference.low  # the always-valid interval is the wider one
    assert c.always_valid.high > c.difference.high
    assert {(x.treatment, x.metric) for x in report.comparisons} == {
        ("B", "ctr"),
        ("B", "ctr_per_user"),
        ("B", "skip_rate"),
    }
    assert report.srm is not None
    assert report.srm.observed == (3, 4)
    assert report.srm.chi2 == pytest.approx(2 * 0.5**2 / 3.5)
    assert not report.srm.flagged
    # Series by day: day 1 holds day-1 users only; the last day equals the whole-window figures.
    assert report.bucket == "day"
    day1 = next(p for p in report.series_groups if p.period == P1 and p.group == "A")
    assert (day1.users, day1.impressions, day1.clicks) == (2, 7, 1)
    x1, y1, _ = _per_user("A", [r for r in ROWS if r[0] == D1])
    assert day1.ctr.high == pytest.approx(_delta(x1, y1)[0] + Z * math.sqrt(_delta(x1, y1)[1]))
    last = next(p for p in report.series_groups if p.period == P2 and p.group == "B")
    whole = report.group("B").ctr
    assert (last.ctr.value, last.ctr.low, last.ctr.high) == pytest.approx((whole.value, whole.low, whole.high))
    last_diff = next(p for p in report.series_differences if p.period == P2)
    assert last_diff.difference.value == pytest.approx(c.difference.value)
    assert last_diff.always_valid.low == pytest.approx(c.always_valid.low)
    assert last_diff.users == 7


def test_json_is_strict_and_round_trips(report: Report) -> None:
    doc = to_json(report)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert list(doc) == ["control", "alpha", "sequential", "groups", "comparisons", "srm", "series", "warnings"]
    assert doc["groups"][0]["ctr"] == {
        "value": pytest.approx(4 / 14),
        "ci_low": pytest.approx(report.group("A").ctr.low),
        "ci_high": pytest.approx(report.group("A").ctr.high),
    }
    assert list(doc["series"]) == ["bucket", "groups", "differences"]
    assert doc["series"]["bucket"] == "day"
    assert doc["series"]["groups"][0]["period"] == "2026-03-01T00:00:00+00:00"
    assert list(doc["series"]["differences"][0]) == ["period", "treatment", "users", "difference", "always_valid"]
    assert doc["sequential"]["planned_users"] == 1_000


def test_table_renders_every_group_and_comparison(report: Report) -> None:
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(to_table(report))
    text = console.export_text()
    assert "A (control)" in text
    assert f"{100 * 4 / 14:.2f}%" in text
    assert "CTR / impression" in text
    assert "Sample ratio" in text
    assert "MISMATCH" not in text


def test_png_is_written_and_readable(report: Report, tmp_path: Path) -> None:
    path = plot_ctr(report, tmp_path / "plots" / "ctr.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (700, 900)
    assert float(pixels[..., :3].std()) > 0.05  # something was drawn


# --- edge cases -------------------------------------------------------------------------------------------------


def test_absent_control_is_a_clear_error() -> None:
    with pytest.raises(ReportError, match=r"control group 'Z' is not among the groups \['A', 'B'\]"):
        build_report(_input(), control="Z")


@pytest.mark.parametrize(
    ("series", "match"),
    [
        (pd.DataFrame(columns=list(SERIES_COLUMNS)), "empty"),
        (pd.DataFrame(ROWS, columns=list(SERIES_COLUMNS)).drop(columns="skips"), "lacks columns"),
        (pd.DataFrame([(D1, "A", "a1", -1, 0, 0)], columns=list(SERIES_COLUMNS)), "non-negative whole counts"),
        (pd.DataFrame([(D1, "A", "a1", 1.5, 0, 0)], columns=list(SERIES_COLUMNS)), "non-negative whole counts"),
        (pd.DataFrame([(D1, "A", "a1", float("nan"), 0, 0)], columns=list(SERIES_COLUMNS)), "non-negative"),
        (pd.DataFrame([("not a day", "A", "a1", 1, 0, 0)], columns=list(SERIES_COLUMNS)), "dates"),
    ],
)
def test_bad_input_is_a_clear_error(series: pd.DataFrame, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        build_report(ReportInput(series=series, latency=pd.DataFrame({"group": [], "latency_ms": []})))


def test_unknown_groups_and_bad_options_are_errors() -> None:
    with pytest.raises(ReportError, match="not in the experiment's shares"):
        build_report(_input(), expected_shares={"A": 0.5, "C": 0.5})
    with pytest.raises(ReportError, match="positive share"):
        build_report(_input(), expected_shares={"A": 0.5, "B": 0.0})
    with pytest.raises(ReportError, match="latency rows name groups"):
        build_report(_input(latency={"A": [1.0], "Q": [2.0]}))
    with pytest.raises(ReportError, match="alpha"):
        build_report(_input(), alpha=1.5)


def test_one_group_only_is_reported_without_comparisons(tmp_path: Path) -> None:
    rows = [r for r in ROWS if r[1] == "A"]
    r = build_report(_input(rows, {"A": LATENCY["A"]}))
    assert r.comparisons == ()
    assert r.srm is None
    assert r.series_differences == ()
    assert any("only one group" in w for w in r.warnings)
    assert to_json(r)["srm"] is None
    assert plot_ctr(r, tmp_path / "one.png").stat().st_size > 5_000


def test_group_with_no_users_is_flagged_not_fatal(tmp_path: Path) -> None:
    r = build_report(_input(), expected_shares={"A": 1, "B": 1, "C": 1})
    c = r.group("C")
    assert (c.users, c.impressions, c.latency_count) == (0, 0, 0)
    assert math.isnan(c.ctr.value)
    assert "group C has no users" in r.warnings
    comp = r.comparison("C", "ctr")
    assert comp.note == "group C has no users"
    assert not comp.significant
    doc = to_json(r)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
    assert doc["groups"][2]["ctr"]["value"] is None
    assert r.srm is not None
    assert r.srm.observed == (3, 4, 0)
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(to_table(r))
    assert "group C has no users" in console.export_text()
    plot_ctr(r, tmp_path / "c.png")


def test_group_without_impressions_and_a_big_mismatch_are_flagged() -> None:
    rows = [*ROWS, *[(D1, "C", f"c{i}", 0, 0, 0) for i in range(40)]]
    r = build_report(_input(rows), control="B")
    assert "group C has users but no impressions" in r.warnings
    assert r.comparison("C", "skip_rate").note == "group C has no impressions"
    assert {x.treatment for x in r.comparisons} == {"A", "C"}  # every group against the chosen control
    assert r.srm is not None
    assert r.srm.flagged  # 3 / 4 / 40 users under equal shares
    assert any("sample ratio mismatch" in w for w in r.warnings)
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(to_table(r))
    assert "MISMATCH" in console.export_text()


def test_data_quality_warnings_and_timestamp_days() -> None:
    ts = pd.Timestamp("2026-03-01 23:30", tz="UTC")
    rows = [
        (ts, "A", "u1", 2, 1, 0),
        (ts - pd.Timedelta(hours=5), "A", "u2", 3, 4, 0),  # more clicks than impressions
        (ts, "B", "u1", 2, 0, 0),  # the same user in both groups
        (ts + pd.Timedelta(hours=1), "B", "u3", 4, 1, 0),
    ]
    r = build_report(_input(rows, {}))
    assert any("1 users appear in more than one group" in w for w in r.warnings)
    assert any("more clicks than impressions" in w for w in r.warnings)
    assert sorted({p.period for p in r.series_groups}) == [P1, P2]
    assert math.isnan(r.group("A").latency_p50_ms)
    assert to_json(r)["groups"][0]["latency_ms"]["p50"] is None


# --- time buckets -----------------------------------------------------------------------------------------------

T0 = pd.Timestamp("2026-03-01 12:00:05", tz="UTC")


def _timed(step: pd.Timedelta) -> list[Row]:
    """ROWS again, the k-th row at T0 + k * step (raw timestamps: the report floors them to its bucket)."""
    return [(T0 + k * step, *row[1:]) for k, row in enumerate(ROWS)]


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("bucket", "step", "starts"),
    [
        ("minute", pd.Timedelta(seconds=20), ["2026-03-01 12:00", "2026-03-01 12:01", "2026-03-01 12:02"]),
        ("hour", pd.Timedelta(minutes=20), ["2026-03-01 12:00", "2026-03-01 13:00", "2026-03-01 14:00"]),
        ("hour", pd.Timedelta(seconds=20), ["2026-03-01 12:00"]),
        ("day", pd.Timedelta(minutes=20), ["2026-03-01 00:00"]),
    ],
)
def test_series_has_one_point_per_bucket_with_data(bucket: Bucket, step: pd.Timedelta, starts: list[str]) -> None:
    r = build_report(_input(_timed(step), bucket=bucket), planned_users=1_000)
    periods = [_utc(s) for s in starts]
    assert r.bucket == bucket
    for g in ("A", "B"):
        assert [p.period for p in r.series_groups if p.group == g] == periods
    assert [p.period for p in r.series_differences] == periods
    # The first bucket counts exactly the rows in it; the last one is the whole window.
    end_of_first = periods[0] + BUCKET_WIDTH[bucket]
    first = [row for k, row in enumerate(ROWS) if T0 + k * step < end_of_first]
    a_points = [p for p in r.series_groups if p.group == "A"]
    x0, y0, _ = _per_user("A", first)
    assert (a_points[0].users, a_points[0].impressions, a_points[0].clicks) == (len(x0), x0.sum(), y0.sum())
    last = a_points[-1]
    assert (last.users, last.impressions) == (3, 14)
    assert (last.ctr.low, last.ctr.high) == pytest.approx((r.group("A").ctr.low, r.group("A").ctr.high))
    doc = to_json(r)
    assert doc["series"]["bucket"] == bucket
    assert [p["period"] for p in doc["series"]["differences"]] == [p.isoformat() for p in periods]


def test_bad_bucket_is_refused_before_any_query() -> None:
    with pytest.raises(ReportError, match="bucket must be one of minute, hour, day; got 'week'"):
        parse_bucket("week")
    with pytest.raises(ReportError, match="bucket must be one of"):
        build_report(_input(bucket=cast(Bucket, "second")))
    # Refused before connecting: nothing listens at this address, so reaching asyncpg would be an OSError instead.
    since, sneaky = dt.datetime(2026, 3, 1, tzinfo=dt.UTC), "1 day'; DROP TABLE impressions; --"
    with pytest.raises(ReportError, match="bucket must be one of"):
        asyncio.run(
            load_report_input("postgresql://nobody@127.0.0.1:1/none", since, since, bucket=cast(Bucket, sneaky))
        )


def test_minute_axis_spans_the_data_padded_by_a_bucket_with_whole_minute_ticks() -> None:
    r = build_report(_input(_timed(pd.Timedelta(seconds=20)), bucket="minute"), planned_users=1_000)
    fig = ctr_figure(r)
    fig.canvas.draw()
    top, bottom = fig.axes[:2]
    limits = [mdates.num2date(x) for x in bottom.get_xlim()]  # type: ignore[no-untyped-call]
    assert limits == [_utc("2026-03-01 11:59"), _utc("2026-03-01 12:03")]
    ticks = [mdates.num2date(x) for x in bottom.get_xticks()]  # type: ignore[no-untyped-call]
    assert len(ticks) >= 3
    assert all((t.second, t.microsecond) == (0, 0) for t in ticks)
    assert "12:01" in [label.get_text() for label in bottom.get_xticklabels()]
    assert "minute" in top.get_title()
    assert not top.containers  # several buckets: bands, no error bars


def test_single_bucket_is_drawn_as_error_bars(tmp_path: Path) -> None:
    r = build_report(_input(_timed(pd.Timedelta(seconds=5)), bucket="minute"), planned_users=1_000)
    assert len({p.period for p in r.series_groups}) == 1
    fig = ctr_figure(r)
    top, bottom = fig.axes[:2]
    bars = [c for c in top.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    for bar, g in zip(bars, ("A", "B"), strict=True):  # each bar runs from its group's interval's low to its high
        assert bar.has_yerr
        ends = sorted(np.asarray(bar.lines[2][0].get_segments()[0])[:, 1])
        assert ends == pytest.approx([100 * r.group(g).ctr.low, 100 * r.group(g).ctr.high])
    c = r.comparison("B", "ctr")
    (diff_bar,) = [b for b in bottom.containers if isinstance(b, ErrorbarContainer)]
    ends = sorted(np.asarray(diff_bar.lines[2][0].get_segments()[0])[:, 1])
    assert ends == pytest.approx([100 * c.difference.low, 100 * c.difference.high])
    (av,) = [col for col in bottom.collections if isinstance(col, LineCollection) and col.get_alpha() == 0.25]
    av_ends = sorted(np.asarray(av.get_segments()[0])[:, 1])
    assert av_ends == pytest.approx([100 * c.always_valid.low, 100 * c.always_valid.high])
    limits = [mdates.num2date(x) for x in bottom.get_xlim()]  # type: ignore[no-untyped-call]
    assert limits == [_utc("2026-03-01 11:59"), _utc("2026-03-01 12:01")]  # one bucket either side of the only one
    path = plot_ctr(r, tmp_path / "single.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (700, 900)
    assert float(pixels[..., :3].std()) > 0.05


def test_the_report_package_loads_neither_matplotlib_nor_rich() -> None:
    """``feedback.report`` (and the queries that fill it) import pandas and scipy only: the PNG is asked for on its
    own (``feedback.report.plot``), and the terminal tables are the CLI's (``recsys.ab_report``)."""
    code = "import sys, feedback.report, feedback.queries; print(sorted({m.split('.')[0] for m in sys.modules}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(ast.literal_eval(result.stdout.strip()))
    assert "pandas" in loaded  # the check sees what was imported
    assert not loaded & {"matplotlib", "rich", "typer", "torch", "trainer"}, loaded
