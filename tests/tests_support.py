"""Helpers the tests share beside the fixtures of tests/conftest.py (importable from any test folder)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from recsys.stack.triton import TritonServer


@dataclass(frozen=True)
class Served:
    database: str
    server: TritonServer
    repository: Path


def on_database(url: str, work: Any) -> Any:
    """Runs ``await work(connection)`` on a fresh connection to ``url``."""

    async def run() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())
