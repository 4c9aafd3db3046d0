"""Schema migrations: ordered, applied once, checked for gaps; run against the real PostgreSQL of the stack."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from feedback.migrate import discover, migrate
from recsys.stack.local import LocalStack


def test_migration_files_are_numbered_without_gaps(tmp_path: Path) -> None:
    assert [m.version for m in discover()] == list(range(1, len(discover()) + 1))
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="without gaps"):
        discover(tmp_path)
    (tmp_path / "2_bad.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


@pytest.mark.stack
def test_the_writer_applied_every_migration_and_a_second_run_applies_none(stack: LocalStack) -> None:
    async def run() -> tuple[list[int], list[int], set[str]]:
        conn = await asyncpg.connect(stack.database_url)
        try:
            applied = [r["version"] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY 1")]
            again = await migrate(conn)
            columns = {r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'feedback'")}  # fmt: skip
        finally:
            await conn.close()
        return applied, again, columns

    applied, again, columns = asyncio.run(run())
    assert applied == [m.version for m in discover()]
    assert again == []
    assert {"event_id", "request_id", "clicked_item", "skipped_items", "seq"} <= columns
