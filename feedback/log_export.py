"""The feedback log out of PostgreSQL into day-partitioned Parquet: the form that outgrows the database.

Layout (hive-style partitions, read by ``trainer/data/log.py``, by pyarrow/Spark/Athena alike, and synced to S3
on EKS as it is)::

    DIR/plays/day=YYYY-MM-DD/part-00000.parquet
    DIR/feedback/day=YYYY-MM-DD/part-00000.parquet
    DIR/impressions/day=YYYY-MM-DD/part-00000.parquet

A day is a UTC calendar day of the event time ``ts``. Exporting a day range is idempotent: each day of each
table is written beside the old one and swapped in by renames, so a rerun (a late event arrived, a crash half
way) rewrites exactly those days and a reader never sees a half-written day. A day without rows leaves no
folder. Rows stream through a server-side cursor into row groups, so a day needs memory for one batch only.
Feedback is read through the view ``feedback_checked`` and carries its ``clean`` flag (forged, orphan and
mismatched events stay in the archive, flagged; training skips them).

The names here are repeated in ``trainer/data/log.py`` (the trainer must not import this package); the
export-then-load test keeps both sides in step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.core.dsn import connect
from recsys.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["SCHEMAS", "ExportSummary", "export_log", "export_log_async"]

DAY_PREFIX = "day="
PART_NAME = "part-00000.parquet"
_TS = pa.timestamp("us", tz="UTC")
_TEXT_LIST = pa.list_(pa.string())

#: Every exported table and its columns, in the database's column order and types.
SCHEMAS: dict[str, pa.Schema] = {
    "plays": pa.schema(
        [
            ("event_id", pa.string()),
            ("ts", _TS),
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("ms_played", pa.int32()),
            ("received", _TS),
            ("seq", pa.int64()),
        ]
    ),
    "feedback": pa.schema(
        [
            ("event_id", pa.string()),
            ("ts", _TS),
            ("request_id", pa.string()),
            ("user_id", pa.string()),
            ("ab_group", pa.string()),
            ("clicked_item", pa.string()),
            ("skipped_items", _TEXT_LIST),
            ("inference_time_ms", pa.float32()),
            ("seq", pa.int64()),
            ("clean", pa.bool_()),  # the view feedback_checked's verdict (migration 0006): what training may use
        ]
    ),
    "impressions": pa.schema(
        [
            ("request_id", pa.string()),
            ("ts", _TS),
            ("user_id", pa.string()),
            ("ab_group", pa.string()),
            ("model", pa.string()),
            ("model_version", pa.int32()),
            ("items", _TEXT_LIST),
            ("latency_ms", pa.float32()),
            ("fallback", pa.bool_()),
        ]
    ),
}
_ORDER = {"plays": "ts, event_id", "feedback": "ts, event_id", "impressions": "ts, request_id"}
#: Where a table's rows are read: feedback through the view that flags forged and orphan events.
_SOURCE = {"feedback": "feedback_checked"}


@dataclass(frozen=True)
class ExportSummary:
    """Rows written per table and day (days without rows are absent), and tables the database lacks."""

    out: Path
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    missing_tables: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return sum(n for days in self.rows.values() for n in days.values())


def export_log(
    dsn: str,
    since: date,
    until: date,
    out: Path,
    *,
    tables: tuple[str, ...] = tuple(SCHEMAS),
    batch_rows: int = 50_000,
) -> ExportSummary:
    """Writes the days ``[since, until)`` of ``tables`` under ``out`` (see the module docstring for the layout)."""
    return asyncio.run(export_log_async(dsn, since, until, out, tables=tables, batch_rows=batch_rows))


async def export_log_async(
    dsn: str,
    since: date,
    until: date,
    out: Path,
    *,
    tables: tuple[str, ...] = tuple(SCHEMAS),
    batch_rows: int = 50_000,
) -> ExportSummary:
    days = day_range(since, until)
    unknown = sorted(set(tables) - set(SCHEMAS))
    if unknown:
        raise ConfigError(f"export: unknown table(s) {', '.join(unknown)} (known: {', '.join(SCHEMAS)})")
    if batch_rows < 1:
        raise ConfigError(f"export: batch_rows must be >= 1, got {batch_rows}")
    conn = await connect(dsn, timeout=30)  # a bad URL or an outage: one line (ConfigError / DataError), no password
    rows: dict[str, dict[str, int]] = {}
    missing: list[str] = []
    try:
        for table in tables:
            if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                log.warning("export: no %s table in the database; skipped", table)
                missing.append(table)
                continue
            rows[table] = {}
            for day in days:
                written = await _export_day(conn, table, day, out / table, batch_rows)
                if written:
                    rows[table][day.isoformat()] = written
    except asyncpg.PostgresError as exc:
        raise DataError(f"export: reading the log failed ({exc})") from exc
    finally:
        await conn.close()
    summary = ExportSummary(out=out, rows=rows, missing_tables=tuple(missing))
    log.info("export: %d rows over %d day(s) into %s", summary.total, len(days), out)
    return summary


def day_range(since: date, until: date) -> list[date]:
    """The UTC days ``since, since + 1, ..., until - 1``; an empty or reversed range is an error, not a no-op."""
    if isinstance(since, datetime) or isinstance(until, datetime):
        raise ConfigError("export: since and until are days (YYYY-MM-DD), not times")
    if since >= until:
        raise ConfigError(f"export: since {since} is not before until {until} (until is exclusive)")
    return [since + timedelta(days=n) for n in range((until - since).days)]


async def _export_day(conn: asyncpg.Connection, table: str, day: date, table_dir: Path, batch_rows: int) -> int:
    """Rewrites one day of one table; returns its row count. Readers see the old day or the new, never a mix."""
    schema = SCHEMAS[table]
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1)
    final = table_dir / f"{DAY_PREFIX}{day.isoformat()}"
    staging = table_dir / f".{final.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    sql = (
        f"SELECT {', '.join(schema.names)} FROM {_SOURCE.get(table, table)} "  # names from SCHEMAS, not from input
        f"WHERE ts >= $1 AND ts < $2 ORDER BY {_ORDER[table]}"
    )
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        async with conn.transaction(readonly=True):
            cursor = await conn.cursor(sql, start, end)
            while batch := await cursor.fetch(batch_rows):
                if writer is None:
                    staging.mkdir(parents=True)
                    writer = pq.ParquetWriter(staging / PART_NAME, schema, compression="zstd")
                writer.write_table(_arrow(batch, schema))
                written += len(batch)
    finally:
        if writer is not None:
            writer.close()
    _swap(staging if written else None, final)
    return written


def _arrow(records: list[asyncpg.Record], schema: pa.Schema) -> pa.Table:
    columns: list[list[Any]] = [[] for _ in schema.names]
    for record in records:
        for i, value in enumerate(record):
            columns[i].append(value)
    return pa.Table.from_arrays(
        [pa.array(values, type=f.type) for values, f in zip(columns, schema, strict=True)], schema=schema
    )


def _swap(staging: Path | None, final: Path) -> None:
    """Puts ``staging`` where ``final`` is (or just removes ``final`` when the day now has no rows)."""
    retired = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(retired)
    if staging is not None:
        staging.rename(final)
    if retired.exists():
        shutil.rmtree(retired)
