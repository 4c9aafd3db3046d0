"""The plumbing of one benchmark run: progress lines, list arguments, the work folder, exporter chatter kept out of
the report, and the latency summary of timings taken in this process."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Floor", "int_list", "output_to", "say", "summarize", "work_folder"]


def say(message: str) -> None:
    """Progress on stderr: stdout carries the report."""
    print(message, file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    """argparse type of ``--concurrency 1,4,16``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return values


@contextlib.contextmanager
def work_folder(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A temporary folder for the run's repository and tool files; ``keep`` leaves it for a look afterwards."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        say(f"work folder (kept): {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Sends this process's stdout and stderr (file descriptors, so C++ and exporter chatter too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


@dataclass(frozen=True)
class Floor:
    """One query at a time, in this process, one thread: what a scorer's maths costs without Triton."""

    runtime: str
    queries: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


def summarize(runtime: str, seconds: list[float]) -> Floor:
    """p50, p99 and mean of single-query timings, in ms."""
    ordered = sorted(seconds)
    return Floor(
        runtime=runtime,
        queries=len(ordered),
        p50_ms=statistics.median(ordered) * 1e3,
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        mean_ms=statistics.fmean(ordered) * 1e3,
    )
