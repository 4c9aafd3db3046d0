"""One progress-bar helper for long loops, so every long job reports the same way (rich, on stderr).

The bar draws on the console of the logging handler when there is one (rich's, on a terminal): one live display
then prints log records above the bar instead of two writers overwriting each other's lines (`recsys tune`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


class Advance(Protocol):
    def __call__(self, steps: int = 1) -> None: ...


def _nothing(steps: int = 1) -> None:
    pass


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Advance]:
    """Yields a function that advances the bar by ``steps`` (one by default; a no-op when ``enabled`` is false)."""
    if not enabled:
        yield _nothing
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_log_console()) as bar:
        task = bar.add_task(description, total=total)

        def advance(steps: int = 1) -> None:
            bar.advance(task, steps)

        yield advance


def track(items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Yields ``items`` while drawing a bar on stderr when ``enabled``."""
    with progress_bar(description, total, enabled=enabled) as advance:
        for item in items:
            yield item
            advance()


def _log_console() -> Console:
    """The console the root logger's rich handler writes to, else a new one on stderr."""
    for handler in logging.getLogger().handlers:
        console = getattr(handler, "console", None)
        if isinstance(console, Console):
            return console
    return Console(stderr=True)
