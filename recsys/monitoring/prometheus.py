"""The committed Prometheus configuration, re-targeted: a copy with other targets and intervals, and promtool.

``grafana/prometheus/prometheus.yml`` names compose/Kubernetes services and scrapes every 15 s. A local run (the
integration test: services on 127.0.0.1, a 1 s scrape so a one-minute run has data) renders a copy with
``render_config`` and writes it anywhere; the copy points at the committed rule files by absolute path.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from recsys.core.errors import RecsysError
from recsys.monitoring.queries import GRAFANA_DIR

PROMETHEUS_DIR = GRAFANA_DIR / "prometheus"
CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"


class PromtoolError(RecsysError):
    """promtool is missing, or it rejected a file (the message carries its output)."""


def render_config(
    *,
    targets: Mapping[str, Sequence[str]] | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    source: Path = CONFIG_FILE,
) -> str:
    """The committed config as YAML text, with ``targets`` replacing each named job's static targets (a job the
    config lacks is an error) and the global intervals replaced where given. Rule file globs become absolute, so
    the copy can be written anywhere."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    glob = config.setdefault("global", {})
    if scrape_interval is not None:
        glob["scrape_interval"] = scrape_interval
    if evaluation_interval is not None:
        glob["evaluation_interval"] = evaluation_interval
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    for name, addresses in (targets or {}).items():
        if name not in jobs:
            raise KeyError(f"job {name!r} is not in {source} (jobs: {sorted(jobs)})")
        jobs[name]["static_configs"] = [{"targets": list(addresses)}]
        if scrape_interval is not None:
            jobs[name].pop("scrape_interval", None)
    config["rule_files"] = [str((source.parent / pattern).resolve()) for pattern in config.get("rule_files", [])]
    return yaml.safe_dump(config, sort_keys=False)


def find_promtool() -> Path:
    """The promtool binary on PATH (Debian: ``apt-get install prometheus``)."""
    found = shutil.which("promtool")
    if found is None:
        raise PromtoolError("promtool not found on PATH (Debian 12: apt-get install -y prometheus)")
    return Path(found)


def promtool(*args: str | Path, timeout_s: float = 60.0) -> str:
    """Run ``promtool args...``; its combined output, or ``PromtoolError`` with that output if it fails."""
    command = [str(find_promtool()), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise PromtoolError(f"{' '.join(command)} exited {result.returncode}:\n{output}")
    return output
