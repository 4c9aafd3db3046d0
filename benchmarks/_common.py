"""What the GPU benchmark files still import from here; the harness (``benchmarks.harness``) is where it lives and
where every other benchmark imports it from."""

from benchmarks.harness.facts import (
    REPO_ROOT,
    RESULTS_DIR,
    SHARED_DATA,
    git_revision,
    load_average,
    machine,
    now_utc,
    versions,
)
from benchmarks.harness.tables import markdown_table, write_results

__all__ = [
    "REPO_ROOT",
    "RESULTS_DIR",
    "SHARED_DATA",
    "git_revision",
    "load_average",
    "machine",
    "markdown_table",
    "now_utc",
    "versions",
    "write_results",
]
