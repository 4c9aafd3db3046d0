"""Helpers the tests share beside the fixtures of tests/conftest.py (importable from any test folder)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from recsys.simulate import organic_plays
from recsys.stack.triton import TritonServer


@dataclass(frozen=True)
class Served:
    database: str
    server: TritonServer
    repository: Path


def writer_auth(stack: Any) -> dict[str, str]:
    """The header a direct caller of the stack's feedback writer needs (its intake token)."""
    return {"authorization": f"Bearer {stack.feedback_token}"}


def on_database(url: str, work: Any) -> Any:
    """Runs ``await work(connection)`` on a fresh connection to ``url``."""

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement, on a fresh connection."""

    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(await conn.fetch(sql, *args))

    rows: list[asyncpg.Record] = on_database(url, fetch)
    return rows


def log_plays(url: str, world: Any, now: datetime) -> None:
    """An hour of organic plays by the listeners' true tastes: 45 minutes before the gate window, 15 in it."""
    rng = np.random.default_rng(5)
    users, items = world.interactions.user_ids.ids, world.interactions.item_ids.ids
    rows = []
    for minutes_ago, per_user in ((50, 6), (5, 4)):
        for n, (u, i) in enumerate(organic_plays(world, np.arange(world.n_users), per_user, rng)):
            ts = now - timedelta(minutes=minutes_ago, seconds=n % 600)
            rows.append((f"{minutes_ago}-{n}", ts, str(users[u]), str(items[i])))

    async def insert(conn: asyncpg.Connection) -> None:
        await conn.executemany("INSERT INTO plays (event_id, ts, user_id, item_id) VALUES ($1, $2, $3, $4)", rows)

    on_database(url, insert)


@contextlib.contextmanager
def small_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (``options``: e.g. ``size=1m``), unmounted after; a skip, with the reason, where
    mounting is not allowed (it needs root: CI runs the suite as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def stub_pids(server: TritonServer, model: str) -> list[int]:
    """The python-backend stub processes Triton runs for ``model`` (their command line names its folder)."""
    found = []
    for pid in server.running_pids():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(args) > 1 and b"triton_python_backend_stub" in args[0] and f"/{model}/".encode() in args[1]:
            found.append(pid)
    return found
