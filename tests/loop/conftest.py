"""What every loop test stands on: its own migrated PostgreSQL (emptied per module) and a real Triton serving the
``served_run`` fixture's ALS run as version 1 of the factor models."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from loop_support import Served, on_database

from feedback.migrate import migrate
from recsys.stack.ports import free_port
from recsys.stack.postgres import LocalPostgres, find_bin_dir
from recsys.stack.process import ServiceError
from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer
from trainer.triton.publish import publish
from trainer.triton.repository import load_all


@pytest.fixture(scope="session")
def loop_database() -> Iterator[str]:
    try:
        find_bin_dir()
    except ServiceError as exc:
        pytest.skip(str(exc))
    data_dir = Path(tempfile.mkdtemp(prefix="recsys-pg-loop-", dir="/var/tmp" if os.geteuid() == 0 else None))
    postgres = LocalPostgres(data_dir, port=free_port())
    try:
        postgres.start()
        on_database(postgres.url, migrate)
        yield postgres.url
    finally:
        postgres.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def served(loop_database: str, served_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    async def empty(conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE plays, feedback, impressions, retrain_cycles")

    on_database(loop_database, empty)
    repository = tmp_path_factory.mktemp("loop-repo")
    publish(served_run, repository)
    with TritonServer(TritonConfig(model_repository=repository, ports=TritonPorts.auto())) as triton:
        load_all(triton, repository)
        yield Served(loop_database, triton, repository)
