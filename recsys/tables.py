"""What the command line prints: the metrics of trained models side by side, a user's top-k, :func:`show`, which
prints any table (the A/B report's too) without ever cutting a number, and ``--json`` documents (:func:`write_json`).

rich shrinks a table that is wider than the console by cutting cells (``66.1…``), and a console that is not a
terminal (a file, a pipe, a CI log) is 80 columns wide. So :func:`show` prints plain columns (no box, as wide as
the content) when the output is not a terminal, and on a terminal lets only text columns wrap: numbers (the
right-aligned columns) keep their width, and a table that still does not fit is printed wider than the terminal
(which wraps the lines) rather than cut.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table

from recsys.core.errors import ConfigError

METRIC_COLUMNS = ("ndcg@10", "recall@20", "map@10", "coverage@10", "mean_popularity@10")
#: Wide enough for any table's natural width; the measure of "as wide as the content".
_UNBOUNDED = 100_000
#: ``--json -``: the document goes to stdout (and everything else to stderr), not to a file named ``-``.
STDOUT = Path("-")


def metrics_table(rows: dict[str, dict[str, Any]], title: str) -> Table:
    """One row per model (its ``metrics.json``): the ranking metrics and the fit time."""
    table = Table(title=title)
    table.add_column("model")
    for column in (*METRIC_COLUMNS, "fit s"):
        table.add_column(column, justify="right")
    for name, metrics in rows.items():
        values = [f"{metrics[c]:.4f}" for c in METRIC_COLUMNS]
        table.add_row(name, *values, f"{metrics.get('fit_seconds', 0.0):.2f}")
    return table


def recommendation_table(run: Any, user: object, items: Any, scores: Any) -> Table:
    """A user's top-k from a loaded run (``trainer.artifacts.load_run``), item names where the run has them;
    stops at the first ``-1`` (fewer items left than asked for)."""
    table = Table(title=f"top-{len(items)} for user {user} ({run.model.name})")
    table.add_column("#", justify="right")
    table.add_column("item id")
    table.add_column("item")
    table.add_column("score", justify="right")
    for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
        if item < 0:
            break
        table.add_row(str(rank), str(run.item_ids.ids[item]), run.item_label(int(item)), f"{score:.3f}")
    return table


def show(console: Console, renderable: RenderableType) -> None:
    """Prints ``renderable`` (tables anywhere inside it) with every number whole: plain columns as wide as the
    content off a terminal; on a terminal, boxed tables where only text columns wrap, as wide as needed."""
    if not isinstance(renderable, Table):
        console.print(renderable, soft_wrap=not console.is_terminal)  # one line per line in a file
        return
    tables = _tables(renderable)
    for table in tables:
        for column in table.columns:
            if column.justify == "right":  # the numbers
                column.no_wrap = True
            else:
                column.overflow = "fold"  # text may wrap, never loses characters
    if console.is_terminal and _needed(console, renderable) <= console.width:
        console.print(renderable)
        return
    for table in tables:  # plain columns: no box, two spaces between columns
        table.box = None
        table.pad_edge = False
    width = max(console.width, _needed(console, renderable)) if console.is_terminal else _natural(console, renderable)
    _sized(console, width).print(renderable)


def _tables(renderable: RenderableType) -> list[Table]:
    """``renderable`` itself when a table, with the tables nested in its cells (a grid of tables)."""
    if not isinstance(renderable, Table):
        return []
    nested = [t for column in renderable.columns for cell in column.cells for t in _tables(cell)]
    return [renderable, *nested]


def _natural(console: Console, renderable: RenderableType) -> int:
    """The width ``renderable`` takes when nothing wraps."""
    return Measurement.get(console, console.options.update_width(_UNBOUNDED), renderable).maximum


def _needed(console: Console, renderable: RenderableType) -> int:
    """The narrowest width at which no number is cut: the natural width less what the text columns of the
    outermost table can give up by wrapping at spaces."""
    if not isinstance(renderable, Table):
        return _natural(console, renderable)
    options = console.options.update_width(_UNBOUNDED)
    slack = 0
    for column in renderable.columns:
        if column.no_wrap:
            continue
        cells = [column.header, *column.cells]
        slack += max(Measurement.get(console, options, c).maximum for c in cells) - max(
            Measurement.get(console, options, c).minimum for c in cells
        )
    return _natural(console, renderable) - slack


def _sized(console: Console, width: int) -> Console:
    """A console on the same output as ``console`` (and with its colours), ``width`` columns wide."""
    return Console(
        file=console.file,
        width=width,
        force_terminal=console.is_terminal,
        color_system=console.color_system,  # type: ignore[arg-type]
        no_color=console.no_color,
        highlight=False,
    )


def check_output(path: Path | None, option: str) -> None:
    """Refuses, before any work is done, an output file that cannot be written: its folder is missing or it is a
    folder (``-`` is stdout)."""
    if path is None or path == STDOUT:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder, not a file")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {path.parent} does not exist")


def write_json(out: Console, path: Path, payload: Any) -> None:
    """One JSON document into ``path``, or onto ``out``'s stream (stdout) when ``path`` is ``-``; a NaN or
    infinite number (a metric with nothing to measure) is written as ``null``, as JSON has no such numbers."""
    text = json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n"
    if path == STDOUT:
        out.file.write(text)
        out.file.flush()
    else:
        path.write_text(text)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value
