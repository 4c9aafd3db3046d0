"""One progress-bar helper for long loops, so every long job reports the same way (rich, on stderr)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yields a function that advances the bar by one step (a no-op when ``enabled`` is false)."""
    if not enabled:
        yield lambda: None
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Yields ``items`` while drawing a bar on stderr when ``enabled``."""
    with progress_bar(description, total, enabled=enabled) as advance:
        for item in items:
            yield item
            advance()
