"""Long fits show progress that moves: GRU4Rec's bar counts predicted plays, not epochs (one epoch can take
minutes), and bars draw on the logging handler's console so log lines and the bar do not overwrite each other."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from rich.console import Console
from rich.logging import RichHandler
from test_gru4rec import cyclic_sessions  # the tiny predictable sessions of the GRU4Rec tests

from trainer.models.gru4rec import GRU4Rec, GRU4RecParams
from trainer.progress import _log_console, progress_bar


def test_gru4rec_progress_counts_plays_within_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    sessions = cyclic_sessions(40, 20, 6, seed=0)
    params = GRU4RecParams(layers=(8,), n_sample=8, n_epochs=2, batch_size=8)
    GRU4Rec(params).fit_sessions(sessions, show_progress=True)
    plays = 2 * 40 * (6 - 1)  # epochs x sessions x predicted plays per session
    assert f"{plays}/{plays}" in capsys.readouterr().err


@pytest.fixture
def rich_logging() -> Iterator[Console]:
    root = logging.getLogger()
    handlers = root.handlers[:]
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    root.handlers[:] = [RichHandler(console=console)]
    yield console
    root.handlers[:] = handlers


def test_the_bar_draws_on_the_logging_console(rich_logging: Console) -> None:
    """Regression: `recsys tune`'s bar and its trial log lines were two writers on one terminal."""
    assert _log_console() is rich_logging
    with progress_bar("tune als", 2) as advance:
        logging.getLogger("trainer.tune").warning("trial done")
        advance()
    assert "trial done" in rich_logging.file.getvalue()  # type: ignore[attr-defined]
