"""The log export against a real PostgreSQL: day partitions, idempotent rewrites, every table, typed columns."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pyarrow.parquet as pq
import pytest

from feedback.log_export import SCHEMAS, day_range, export_log
from recsys.core.errors import ConfigError, DataError
from recsys.stack.ports import free_port

DAY = datetime(2026, 11, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def database(log_database: str) -> str:
    """The tests' own migrated PostgreSQL (tests/conftest.py); each test empties the tables first."""
    return log_database


async def _run(url: str, work):  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(url)
    try:
        return await work(conn)
    finally:
        await conn.close()


def _insert(url: str, plays=(), feedback=(), impressions=()) -> None:  # type: ignore[no-untyped-def]
    async def work(conn: asyncpg.Connection) -> None:
        await conn.execute("TRUNCATE plays, feedback, impressions")
        await conn.executemany(
            "INSERT INTO plays (event_id, ts, user_id, item_id, ms_played) VALUES ($1,$2,$3,$4,$5)", plays
        )
        await conn.executemany(
            "INSERT INTO feedback (event_id, ts, request_id, user_id, ab_group, clicked_item, skipped_items) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7)",
            feedback,
        )
        await conn.executemany(
            "INSERT INTO impressions (request_id, ts, user_id, ab_group, model, model_version, items, latency_ms, "
            "fallback) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
            impressions,
        )

    asyncio.run(_run(url, work))


def _at(days: float, hours: float = 0) -> datetime:
    return DAY + timedelta(days=days, hours=hours)


def test_days_partition_by_utc_day_and_keep_types(database: str, tmp_path: Path) -> None:
    _insert(
        database,
        plays=[
            ("p1", _at(0, 1), "u1", "i1", 1000),
            ("p2", _at(0, 23.99), "u1", "i2", None),
            ("p3", _at(1, 0), "u2", "i1", 5),
        ],
        feedback=[("f1", _at(1, 2), "r1", "u1", "A", "i3", ["i4", "i5"]), ("f2", _at(2, 2), "r2", "u2", "B", None, [])],
        impressions=[("r1", _at(1, 1), "u1", "A", "recsys_a", 3, ["i3", "i4", "i5"], 2.5, False)],
    )
    summary = export_log(database, DAY.date(), DAY.date() + timedelta(days=3), tmp_path)

    assert summary.rows == {
        "plays": {"2026-11-30": 2, "2026-12-01": 1},
        "feedback": {"2026-12-01": 1, "2026-12-02": 1},
        "impressions": {"2026-12-01": 1},
    }
    assert summary.total == 6
    day0 = pq.read_table(tmp_path / "plays" / "day=2026-11-30")
    assert day0.schema.remove_metadata() == SCHEMAS["plays"]  # the hive folder adds no column: names are explicit
    assert day0["event_id"].to_pylist() == ["p1", "p2"]
    assert day0["ms_played"].to_pylist() == [1000, None]
    fb = pq.read_table(tmp_path / "feedback" / "day=2026-12-01" / "part-00000.parquet")
    assert fb["skipped_items"].to_pylist() == [["i4", "i5"]]
    assert fb["ts"].to_pylist() == [_at(1, 2)]
    imp = pq.read_table(tmp_path / "impressions" / "day=2026-12-01" / "part-00000.parquet")
    assert imp["items"].to_pylist() == [["i3", "i4", "i5"]]
    assert imp["model_version"].to_pylist() == [3]
    assert not (tmp_path / "impressions" / "day=2026-11-30").exists()  # no rows, no folder


def test_a_rerun_rewrites_exactly_its_days(database: str, tmp_path: Path) -> None:
    _insert(database, plays=[("a", _at(0, 1), "u", "i", None), ("b", _at(1, 1), "u", "j", None)])
    export_log(database, DAY.date(), DAY.date() + timedelta(days=2), tmp_path)
    # A late play for day 0 and day 1's play gone (say, deleted as invalid): rerun day 0 and day 1 only.
    _insert(database, plays=[("a", _at(0, 1), "u", "i", None), ("late", _at(0, 5), "v", "i", None)])
    summary = export_log(database, DAY.date(), DAY.date() + timedelta(days=2), tmp_path)

    assert summary.rows["plays"] == {"2026-11-30": 2}
    assert pq.read_table(tmp_path / "plays" / "day=2026-11-30")["event_id"].to_pylist() == ["a", "late"]
    assert not (tmp_path / "plays" / "day=2026-12-01").exists()
    assert [p.name for p in (tmp_path / "plays").iterdir()] == ["day=2026-11-30"]  # no staging or retired folders left

    # A range that does not cover day 0 leaves it alone.
    export_log(database, DAY.date() + timedelta(days=5), DAY.date() + timedelta(days=6), tmp_path)
    assert (tmp_path / "plays" / "day=2026-11-30" / "part-00000.parquet").is_file()


def test_batches_stream_into_one_file(database: str, tmp_path: Path) -> None:
    plays = [(f"e{n}", _at(0, n / 100), f"u{n % 7}", f"i{n % 11}", n) for n in range(250)]
    _insert(database, plays=plays)
    until = DAY.date() + timedelta(days=1)
    summary = export_log(database, DAY.date(), until, tmp_path, tables=("plays",), batch_rows=64)
    part = tmp_path / "plays" / "day=2026-11-30" / "part-00000.parquet"
    assert summary.rows == {"plays": {"2026-11-30": 250}}
    assert pq.read_table(part)["event_id"].to_pylist() == [f"e{n}" for n in range(250)]  # in time order
    assert pq.ParquetFile(part).num_row_groups == 4  # 64 + 64 + 64 + 58: one batch in memory at a time


def test_bad_ranges_and_tables_are_one_line_errors(database: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not before until"):
        day_range(date(2026, 12, 2), date(2026, 12, 2))
    with pytest.raises(ConfigError, match="are days"):
        day_range(DAY, DAY + timedelta(days=1))
    with pytest.raises(ConfigError, match="unknown table"):
        export_log(database, date(2026, 12, 1), date(2026, 12, 2), tmp_path, tables=("clicks",))
    with pytest.raises(DataError, match="cannot connect"):
        export_log(f"postgresql://nobody@127.0.0.1:{free_port()}/none", date(2026, 12, 1), date(2026, 12, 2), tmp_path)
