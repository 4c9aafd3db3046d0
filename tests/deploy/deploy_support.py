"""Helpers of the deployment tests: offline validators (a test skips with a message where one is not installed)
and the rendered Kubernetes overlays. A plain module, not a conftest: the suite has one conftest module name."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# `scripts.aws` is imported from the checkout, as `python -m scripts.aws` does from the repository root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OVERLAYS = ("local", "eks")
#: npm packages live in a git-ignored folder of the checkout (bootstrap installs them there).
NODE_MODULES = ROOT / ".cache" / "node" / "node_modules"
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}"
)


def tool(name: str) -> str:
    """Path of a command-line validator: the venv's own first (pip installs them there), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/lib/bootstrap.sh installs it)")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def rendered(overlay: str) -> str:
    """An overlay rendered by `kubectl kustomize` (once per test session)."""
    result = run(tool("kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay))
    assert result.returncode == 0, f"kustomize {overlay}: {result.stderr}"
    return result.stdout


def objects(overlay: str) -> list[dict[str, Any]]:
    return documents(rendered(overlay))
