"""Markdown tables from rows, and the result files (Markdown for people, JSON for tools) of every benchmark."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["Column", "fmt", "markdown_table", "table", "write_results"]

T = TypeVar("T")


def fmt(value: float | None, digits: int = 2) -> str:
    """A figure with thousands separators; ``-`` where there is none."""
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are written with ``str``, a ``|`` inside one escaped (a failure's reason
    quoting a tool's output would otherwise split its row)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Column(Generic[T]):
    """One column of a :func:`table`: its header and how a row's item becomes the cell."""

    header: str
    cell: Callable[[T], object]


def table(columns: Sequence[Column[T]], items: Iterable[T]) -> str:
    """A Markdown table with one row per item, the cells computed by the columns."""
    return markdown_table([c.header for c in columns], ([c.cell(item) for c in columns] for item in items))


def write_results(out_dir: Path, stem: str, markdown: str, payload: dict[str, Any]) -> tuple[Path, Path]:
    """``<out_dir>/<stem>.md`` and ``<stem>.json``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md_path.write_text(markdown)
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return md_path, json_path
