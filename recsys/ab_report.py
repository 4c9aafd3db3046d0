"""The A/B report on a terminal: what ``recsys ab-report`` and the demo print.

The window is read from PostgreSQL (:mod:`feedback.queries`), the report built by :mod:`feedback.report`, printed
as rich tables (:func:`recsys.tables.show`: no number cut), and written as JSON (``-``: stdout, alone) and PNG
when asked. The tables live here, on the CLI's side: the writer service and :mod:`feedback.report` itself never
import rich. Every way the database can fail (no server, a bad URL, no schema) is one :class:`ConfigError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from feedback.report.model import METRIC_LABELS, Interval, Report
from recsys.core.dsn import redact, scrub
from recsys.core.errors import ConfigError, DataError
from recsys.tables import STDOUT, check_output, show, write_json

if TYPE_CHECKING:
    from gateway.experiment import Experiment

DEFAULT_WINDOW = timedelta(days=30)


def report_window(since: datetime | None, until: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """``[since, until)`` with the defaults of ``recsys ab-report`` (the 30 days before ``now``); naive times are
    taken as UTC."""
    end = (until or now).replace(tzinfo=(until.tzinfo if until and until.tzinfo else UTC))
    start = (since or end - DEFAULT_WINDOW).replace(tzinfo=(since.tzinfo if since and since.tzinfo else UTC))
    return start, end


def print_ab_report(
    out: Console,
    database_url: str,
    experiment: Experiment,
    start: datetime,
    end: datetime,
    *,
    control: str = "A",
    alpha: float = 0.05,
    planned_users: int = 10_000,
    json_out: Path | None = None,
    plot: Path | None = None,
    bucket: str = "day",
) -> None:
    """Reads the window from PostgreSQL and prints the report (and writes JSON / PNG when asked); the series over
    time is cumulative per ``bucket`` (minute, hour or day, in UTC). With ``json_out`` ``-`` the JSON document is
    all that goes to ``out``; the rest goes to stderr. Outputs are checked before the database is read."""
    from feedback.queries import load_report_input
    from feedback.report import ReportError, build_report, parse_bucket, to_json

    try:
        checked = parse_bucket(bucket)
    except ReportError as exc:
        raise ConfigError(f"--bucket: {exc}") from None
    check_output(json_out, "--json")
    if plot == STDOUT:
        raise ConfigError("--plot -: a PNG does not go to stdout; name a file")
    check_output(plot, "--plot")
    shares = {g.name: float(g.share) / 100.0 for g in experiment.groups}
    try:  # connecting: recsys.core.dsn.connect's one-line errors (a bad URL, an outage), without the password
        data, flagged = asyncio.run(load_report_input(database_url, start, end, bucket=checked))
    except (ConfigError, DataError) as exc:
        raise ConfigError(f"RECSYS_DATABASE_URL={exc}") from None
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:  # the connection lost while reading
        raise ConfigError(
            f"PostgreSQL at {redact(database_url)} stopped answering: {scrub(str(exc), database_url)}"
        ) from None
    except asyncpg.PostgresError as exc:  # no such table (migrations not run)
        raise ConfigError(f"PostgreSQL at {redact(database_url)} cannot give the report: {exc}") from None
    try:
        report = build_report(data, control=control, alpha=alpha, expected_shares=shares, planned_users=planned_users)
    except ReportError as exc:
        raise ConfigError(f"no report: {exc}") from None
    human = Console(stderr=True, soft_wrap=not out.is_terminal) if json_out == STDOUT else out
    if json_out != STDOUT:
        for part in report_parts(report):
            show(out, part)
    human.print(
        f"feedback left out as flagged: {flagged.orphan} without an impression, {flagged.click_not_shown} clicks on "
        f"items not shown, {flagged.mismatch} with another user or group than the impression"
    )
    if json_out is not None:
        write_json(out, json_out, to_json(report) | {"flagged_feedback": dataclasses.asdict(flagged)})
        if json_out != STDOUT:
            out.print(f"JSON written to {json_out}")
    if plot is not None:
        from feedback.report.plot import plot_ctr  # matplotlib only when a plot is asked for

        plot_ctr(report, plot)
        human.print(f"plot written to {plot}")


# --- tables -------------------------------------------------------------------------------------------------------


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


def report_parts(report: Report) -> list[RenderableType]:
    """The report's parts in print order: the group table, the comparisons, the SRM line and the warnings."""
    parts: list[RenderableType] = [summary_table(report)]
    if report.comparisons:
        parts.append(comparison_table(report))
    if report.srm is not None:
        s = report.srm
        rows = zip(s.groups, s.observed, s.expected_shares, strict=True)
        split = ", ".join(f"{g} {n:,} (expected {100 * sh:.0f}%)" for g, n, sh in rows)
        verdict = Text("MISMATCH", style="bold red") if s.flagged else Text("ok", style="green")
        parts.append(
            Text.assemble(
                "Sample ratio: ", split, f"; chi2 = {s.chi2:.2f} (df {s.df}), p = {_p(s.p_value)} -> ", verdict
            )
        )
    parts.extend(Text(f"warning: {w}", style="yellow") for w in report.warnings)
    return parts


def to_table(report: Report) -> Table:
    """The whole report as one rich Table (a grid of :func:`report_parts`), for a caller that prints one thing."""
    grid = Table.grid(padding=(1, 0))
    grid.add_column()
    for part in report_parts(report):
        grid.add_row(part)
    return grid
