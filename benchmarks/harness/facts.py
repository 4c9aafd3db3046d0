"""Facts every result records: where things are, the machine, package versions, the commit, how busy it was."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from recsys.stack.memory import process_memory

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "SHARED_DATA",
    "current_rss_mib",
    "git_revision",
    "load_average",
    "machine",
    "machine_line",
    "now_utc",
    "peak_rss_mib",
    "run_header",
    "usable_cores",
    "versions",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
# The shared data lives beside the repository (../shared/data), never inside it.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def total_memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": total_memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def machine_line(load_before: float | None) -> str:
    """The closing line of a report: other work on the machine skews every timing, so say how busy it was."""
    facts = machine()
    return f"Machine: {facts['cpu']}, {facts['cores']} cores; load average before the run {load_before}."


def versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_header(
    benchmark: str, mode: str, started_at: str, load_start: float | None, packages: tuple[str, ...]
) -> dict[str, Any]:
    """The facts every result file opens with: what ran, when, on which machine and revision, under what load."""
    return {
        "benchmark": benchmark,
        "mode": mode,
        "started_at": started_at,
        "finished_at": now_utc(),
        "git": git_revision(),
        "machine": machine(),
        "load_average": {"start": load_start, "end": load_average()},
        "versions": versions(packages),
    }


def git_revision() -> str | None:
    """Short commit of the working tree, with ``+dirty`` when it has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def load_average() -> float | None:
    """1-minute load average: how busy the machine was (other work skews every timing)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def peak_rss_mib() -> float:
    """High-water mark of this process's resident memory (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def current_rss_mib() -> float | None:
    rss = process_memory(os.getpid()).rss_kib
    return rss / 2**10 if rss else None
