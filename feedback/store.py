"""Batched, idempotent writes to PostgreSQL: binary COPY into a staging table, then one INSERT ... ON CONFLICT
DO NOTHING per table, all in one transaction (COPY alone cannot skip duplicates)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

IMPRESSION_COLUMNS = (
    "request_id", "ts", "user_id", "ab_group", "model", "model_version", "items", "latency_ms", "fallback",
)  # fmt: skip
FEEDBACK_COLUMNS = (
    "event_id", "ts", "request_id", "user_id", "ab_group", "clicked_item", "skipped_items", "inference_time_ms",
)  # fmt: skip

#: SQLSTATE classes of a batch the database refuses as data (22 data exception, 23 integrity violation): only
#: those are set aside as dead letters; every other error is retried (disk full, read-only after a failover,
#: deadlock, cancelled query: the same batch can succeed later).
DATA_ERROR_CLASSES = ("22", "23")


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and str(getattr(exc, "sqlstate", "") or "")[:2] in DATA_ERROR_CLASSES


#: Errors after which the same batch may succeed later (the database is down, restarting or unreachable).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def rows_of(payloads: list[bytes]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Spool payloads (validated JSON events) -> impression rows and feedback rows, in column order."""
    impressions, feedback = [], []
    for payload in payloads:
        e = orjson.loads(payload)
        if e["kind"] == "impression":
            impressions.append(
                (e["request_id"], _ts(e["ts"]), e["user_id"], e["group"], e["model"], e["model_version"],
                 e["items"], e["latency_ms"], e["fallback"])
            )  # fmt: skip
        else:
            feedback.append(
                (e["event_id"], _ts(e["ts"]), e["request_id"], e["user_id"], e["group"], e.get("clicked_item"),
                 e.get("skipped_items", []), e.get("inference_time_ms"))
            )  # fmt: skip
    return impressions, feedback


async def _copy_insert(conn: asyncpg.Connection, table: str, columns: tuple[str, ...], rows: list[Any]) -> int:
    stage, cols = f"stage_{table}", ", ".join(columns)
    # Only the copied columns, without constraints: ``LIKE`` would copy NOT NULL but not the defaults, so a
    # column filled by a default (feedback.seq) would refuse every COPY.
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS SELECT {cols} FROM {table} WITH NO DATA"
    )
    await conn.copy_records_to_table(stage, records=rows, columns=columns)
    status = await conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING")
    return int(status.rsplit(" ", 1)[-1])


async def write_batch(conn: asyncpg.Connection, payloads: list[bytes]) -> tuple[int, int]:
    """Writes one batch atomically; returns (impressions, feedback) newly stored (duplicates are skipped)."""
    impressions, feedback = rows_of(payloads)
    async with conn.transaction():
        n_imp = await _copy_insert(conn, "impressions", IMPRESSION_COLUMNS, impressions) if impressions else 0
        n_fb = await _copy_insert(conn, "feedback", FEEDBACK_COLUMNS, feedback) if feedback else 0
    return n_imp, n_fb


async def insert_one_by_one(conn: asyncpg.Connection, payloads: list[bytes]) -> None:
    """One INSERT per event: the baseline of ``benchmarks/feedback_write.py`` (and the dead-letter sorting path)."""
    impressions, feedback = rows_of(payloads)
    imp_sql = (
        f"INSERT INTO impressions ({', '.join(IMPRESSION_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT DO NOTHING"
    )
    fb_sql = (
        f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT DO NOTHING"
    )
    for row in impressions:
        await conn.execute(imp_sql, *row)
    for row in feedback:
        await conn.execute(fb_sql, *row)
