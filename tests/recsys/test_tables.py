"""Tables never cut a number (issue 15: ``66.1…`` at 80 columns and in every file or pipe): plain columns off a
terminal, and on a narrow terminal only text wraps."""

from __future__ import annotations

import io
import re

import pandas as pd
import pytest
from rich.console import Console

from feedback.report import build_report
from feedback.report.model import SERIES_COLUMNS, ReportInput
from recsys.ab_report import report_parts
from recsys.tables import METRIC_COLUMNS, metrics_table, show

#: Long numbers on purpose: what rich used to cut first.
METRICS = {
    "popularity (baseline)": dict.fromkeys(METRIC_COLUMNS, 66.123456) | {"fit_seconds": 1234.5},
    "als": dict.fromkeys(METRIC_COLUMNS, 0.987654) | {"fit_seconds": 98765.43},
}
NUMBERS = ("66.1235", "0.9877", "1234.50", "98765.43")


def _console(*, terminal: bool, width: int) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=width, color_system=None)


def _text(console: Console) -> str:
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("width", [60, 80, 200])
def test_a_terminal_never_cuts_a_number(width: int) -> None:
    console = _console(terminal=True, width=width)
    show(console, metrics_table(METRICS, "synthetic · random-holdout"))
    text = _text(console)
    assert "…" not in text
    for number in NUMBERS:
        assert text.count(number) == (5 if number in ("66.1235", "0.9877") else 1), (number, text)
    if width == 200:
        assert "┃" in text  # a wide terminal keeps the boxed table


@pytest.mark.parametrize("width", [40, 80])
def test_off_a_terminal_the_columns_are_plain_and_whole(width: int) -> None:
    """A file or a pipe (COLUMNS says nothing about it): one line per row, no box, every number whole."""
    console = _console(terminal=False, width=width)
    show(console, metrics_table(METRICS, "synthetic · random-holdout"))
    lines = _text(console).splitlines()
    assert not set("┃│━─┏┡└").intersection("".join(lines))
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", *METRIC_COLUMNS, "fit", "s"]
    als = next(line for line in lines if line.startswith("als"))
    assert als.split() == ["als", *["0.9877"] * 5, "98765.43"]


def test_the_ab_report_is_whole_in_a_pipe() -> None:
    rows = [("2026-03-01", g, f"{g}{u}", 10 + u, 3, 1) for g in ("A", "B") for u in range(40)]
    report = build_report(
        ReportInput(
            series=pd.DataFrame(rows, columns=list(SERIES_COLUMNS)),
            latency=pd.DataFrame({"group": ["A", "B"], "latency_ms": [5.25, 6.75]}),
            bucket="day",
        ),
        planned_users=80,
    )
    console = _console(terminal=False, width=80)
    for part in report_parts(report):
        show(console, part)
    text = _text(console)
    assert "…" not in text
    control = next(line for line in text.splitlines() if line.startswith("A (control)"))
    ctr = 100 * report.group("A").ctr.value
    assert re.search(rf"{ctr:.2f}% \[\d+\.\d\d, \d+\.\d\d\]", control), control
    srm = next(line for line in text.splitlines() if line.startswith("Sample ratio"))
    assert srm.rstrip().endswith(("ok", "MISMATCH"))  # one line, not wrapped at 80 columns
