"""Helpers of the container tests (tests/containers): podman with the project's settings, the images built once per
session by scripts/containers.sh, and the gate that keeps these tests out of the default run.

They build five images and start containers (about 15 minutes on a cold cache, several on a warm one, on the
project's 2-core machine): the default suite skips them; ``scripts/containers.sh test`` (or
``RECSYS_CONTAINER_TESTS=1 pytest tests/containers``) runs them. A plain module, not a conftest: the suite has one
conftest module name."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "containers.sh"
ENABLE = "RECSYS_CONTAINER_TESTS"
IMAGES = ("gateway", "feedback", "nginx", "triton", "trainer")

#: The module mark of every container test: skipped, with the reason, unless asked for.
gate = pytest.mark.skipif(
    os.environ.get(ENABLE) != "1",
    reason=f"container tests build every image with podman (minutes): `scripts/containers.sh test` or {ENABLE}=1",
)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(ROOT / "docker" / "podman" / "containers.conf"))
    return env


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One podman command with the project's containers.conf; a failure shows podman's own words."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/containers.sh build installs it)")
    result = subprocess.run(
        ["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def script(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SCRIPT), *args],
        env=podman_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"containers.sh {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def inspect(kind: str, name: str) -> dict[str, Any]:
    data: list[dict[str, Any]] | dict[str, Any] = json.loads(podman(kind, "inspect", name).stdout)
    return data[0] if isinstance(data, list) else data  # podman 4.3's `pod inspect` answers one object


def bases() -> dict[str, str]:
    """The base images the last build used (scripts/containers.sh writes them)."""
    path = ROOT / ".cache" / "containers" / "bases.env"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@functools.cache
def build_images() -> None:
    """Every image, through the one command, once per test session (podman's layer cache makes a rebuild of
    unchanged code quick)."""
    script("build", timeout=3600)
