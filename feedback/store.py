"""Batched, idempotent writes to PostgreSQL: binary COPY into a staging table, then one INSERT ... ON CONFLICT
DO NOTHING per table, all in one transaction (COPY alone cannot skip duplicates)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from feedback.conflicts import digest

IMPRESSION_COLUMNS = (
    "request_id", "ts", "user_id", "ab_group", "model", "model_version", "items", "latency_ms", "fallback",
)  # fmt: skip
FEEDBACK_COLUMNS = (
    "event_id", "ts", "request_id", "user_id", "ab_group", "clicked_item", "skipped_items", "inference_time_ms",
    "digest",
)  # fmt: skip
PLAY_COLUMNS = ("event_id", "ts", "user_id", "item_id", "ms_played", "digest")  # received, seq: the table's defaults

#: Event kind -> (table, columns), in the order a batch writes them.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "impression": ("impressions", IMPRESSION_COLUMNS),
    "feedback": ("feedback", FEEDBACK_COLUMNS),
    "play": ("plays", PLAY_COLUMNS),
}
#: Tables keyed by a client's event_id, whose rows carry a content digest (feedback.conflicts).
KEYED_TABLES = {"feedback": "feedback", "plays": "play"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class BatchResult:
    """Events newly stored, by kind; and the (kind, event_id) keys of events refused because the stored row of their
    key holds other content, with that row's digest."""

    written: dict[str, int]
    conflicts: dict[tuple[str, str], bytes] = field(default_factory=dict)  # key -> the digest stored for it


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


def _ts_ms(millis: int) -> datetime:
    """Exact, unlike ``fromtimestamp(ms / 1000)``, whose float can land a microsecond off."""
    return _EPOCH + timedelta(milliseconds=millis)


def rows_of(payloads: list[bytes]) -> dict[str, list[tuple[Any, ...]]]:
    """Spool payloads (validated JSON events) -> rows in column order, by event kind (every kind of ``TABLES``)."""
    rows: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in TABLES}
    for payload in payloads:
        e = orjson.loads(payload)
        if e["kind"] == "impression":
            rows["impression"].append(
                (e["request_id"], _ts(e["ts"]), e["user_id"], e["group"], e["model"], e["model_version"],
                 e["items"], e["latency_ms"], e["fallback"])
            )  # fmt: skip
        elif e["kind"] == "play":
            rows["play"].append(
                (e["event_id"], _ts_ms(e["ts_ms"]), e["user_id"], e["item_id"], e.get("ms_played"), digest(e))
            )
        else:
            rows["feedback"].append(
                (e["event_id"], _ts(e["ts"]), e["request_id"], e["user_id"], e["group"], e.get("clicked_item"),
                 e.get("skipped_items", []), e.get("inference_time_ms"), digest(e))
            )  # fmt: skip
    return rows


async def _copy_insert(
    conn: asyncpg.Connection, table: str, columns: tuple[str, ...], rows: list[Any]
) -> tuple[int, dict[str, bytes]]:
    """Stores ``rows`` (duplicates skipped); returns how many were new and, for a keyed table, event_id -> stored
    digest of the rows whose stored content differs from a staged one (that staged event is not stored)."""
    stage, cols = f"stage_{table}", ", ".join(columns)
    # Only the copied columns, without constraints: ``LIKE`` would copy NOT NULL but not the defaults, so a
    # column filled by a default (feedback.seq) would refuse every COPY.
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS SELECT {cols} FROM {table} WITH NO DATA"
    )
    await conn.copy_records_to_table(stage, records=rows, columns=columns)
    status = await conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING")
    conflicts: dict[str, bytes] = {}
    if table in KEYED_TABLES:
        found = await conn.fetch(
            f"SELECT DISTINCT s.event_id, t.digest FROM {stage} s JOIN {table} t USING (event_id) "
            "WHERE t.digest <> s.digest"
        )
        conflicts = {r["event_id"]: bytes(r["digest"]) for r in found}
    return int(status.rsplit(" ", 1)[-1]), conflicts


async def write_batch(conn: asyncpg.Connection, payloads: list[bytes]) -> BatchResult:
    """Writes one batch atomically; returns the events newly stored by kind (duplicates are skipped) and those
    refused for a key that holds other content."""
    rows = rows_of(payloads)
    result = BatchResult(dict.fromkeys(TABLES, 0))
    async with conn.transaction():
        for kind, (table, columns) in TABLES.items():
            if rows[kind]:
                result.written[kind], conflicts = await _copy_insert(conn, table, columns, rows[kind])
                result.conflicts |= {(kind, event_id): d for event_id, d in conflicts.items()}
    return result


async def stored_digests(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    """The digests stored for these (kind, event_id) keys (rows without a digest, or absent, are left out)."""
    found: dict[tuple[str, str], bytes] = {}
    for table, kind in KEYED_TABLES.items():
        ids = [event_id for k, event_id in keys if k == kind]
        if ids:
            rows = await conn.fetch(
                f"SELECT event_id, digest FROM {table} WHERE event_id = ANY($1::text[]) AND digest IS NOT NULL", ids
            )
            found |= {(kind, r["event_id"]): bytes(r["digest"]) for r in rows}
    return found


async def insert_one_by_one(conn: asyncpg.Connection, payloads: list[bytes]) -> dict[tuple[str, str], bytes]:
    """One INSERT per event: the baseline of ``benchmarks/feedback_write.py`` (and the dead-letter sorting path).

    Returns, like :func:`write_batch`, the (kind, event_id) keys not stored because their row holds other content,
    with that row's digest: ``ON CONFLICT DO NOTHING`` alone dropped them without a trace."""
    rows = rows_of(payloads)
    conflicts: dict[tuple[str, str], bytes] = {}
    for kind, (table, columns) in TABLES.items():
        values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) ON CONFLICT DO NOTHING"
        keyed = table in KEYED_TABLES
        for row in rows[kind]:
            status = await conn.execute(sql, *row)
            if keyed and status.endswith(" 0"):  # not inserted: a retry (same digest) or a conflict
                event_id, staged = row[0], row[-1]
                stored = await conn.fetchval(f"SELECT digest FROM {table} WHERE event_id = $1", event_id)
                if stored is not None and bytes(stored) != staged:
                    conflicts[(kind, event_id)] = bytes(stored)
    return conflicts
