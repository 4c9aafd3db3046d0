"""Moves spooled events into PostgreSQL in batches, forever: waits out a database outage (events keep arriving
in the spool meanwhile) and sets aside, in a dead-letter file, the rare event the database refuses as data or
whose event_id the database already holds with other content (feedback.conflicts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import asyncpg
import orjson

from feedback.conflicts import Key, SpooledKeys, digest, keyed_payloads
from feedback.metrics import WriterMetrics
from feedback.migrate import migrate
from feedback.spool import Record, Spool, open_private
from feedback.store import TRANSIENT_ERRORS, insert_one_by_one, is_data_error, stored_digests, write_batch

log = logging.getLogger(__name__)

LOOKUP_PAUSE_S = 5.0  # after a failed look-up of stored event ids, intake skips them this long


class DatabaseWriter:
    def __init__(
        self,
        spool: Spool,
        dsn: str,
        metrics: WriterMetrics,
        *,
        batch_size: int = 2000,
        interval_s: float = 0.05,
        max_backoff_s: float = 2.0,
        keys: SpooledKeys | None = None,
    ) -> None:
        self.spool = spool
        self.keys = keys if keys is not None else SpooledKeys()  # released here once their events are stored
        self._lookup: asyncpg.Connection | None = None  # intake's reads of stored digests, beside the writes
        self._lookup_lock = asyncio.Lock()
        self._lookup_paused_until = 0.0
        self.dsn = dsn
        self.metrics = metrics
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self._conn: asyncpg.Connection | None = None
        self.migrated = False
        self._last_ok = False  # the last write (or connection attempt) succeeded
        self._last_ok_at = 0.0  # monotonic time of the last successful write

    @property
    def db_up(self) -> bool:
        """The database takes our writes: the last attempt succeeded, and with events waiting, recently."""
        recent = time.monotonic() - self._last_ok_at < 5.0
        return self._last_ok and (not self.spool.pending or recent)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=30)
            # The staging tables are temporary: their pages live in this backend's private temp buffers, which
            # PostgreSQL grows up to temp_buffers (8 MB by default) and keeps. A soak showed that as a steady rise
            # of the backend's memory; 2 MB holds a full batch and bounds it. Must precede the first temp access.
            await self._conn.execute("SET temp_buffers = '2MB'")
            if not self.migrated:
                await migrate(self._conn)
                self.migrated = True
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.terminate()
            self._conn = None

    async def run(self) -> None:
        try:  # migrate at start when the database is there; otherwise at the first successful write
            await self._connection()
            self._succeeded()
        except Exception as exc:  # whatever it is, the loop below retries; events wait in the spool
            log.warning("database not usable at start (%s); events will wait in the spool", exc)
            await self._drop_connection()
        backoff = self.interval_s
        while True:
            self.metrics.spool_events.set(len(self.spool.pending))
            if not self.spool.pending:
                # Cleared first: an event left set with nothing pending (a commit that failed half-way) made this
                # loop spin a core at 100% while idle. Set again by the next fsync'd append.
                self.spool.new_records.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.spool.new_records.wait(), 1.0)
                self.spool.probe()  # a spool fault (full disk) clears here too when no append comes to try
                continue
            if len(self.spool.pending) < self.batch_size:  # let a batch fill up a little
                await asyncio.sleep(self.interval_s)
            batch = self.spool.take(self.batch_size)
            try:
                await self._write(batch)
                backoff = self.interval_s
                self._succeeded()
            except Exception as exc:  # the loop must outlive any failure: events wait in the spool
                self._last_ok = False
                self.metrics.db_up.set(0)
                if isinstance(exc, TRANSIENT_ERRORS):
                    log.warning("database unavailable (%s); %d events wait in the spool", exc, len(self.spool.pending))
                else:
                    log.exception("failure writing a batch; retrying (%d events wait)", len(self.spool.pending))
                await self._drop_connection()
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)

    def _succeeded(self) -> None:
        self._last_ok, self._last_ok_at = True, time.monotonic()
        self.metrics.db_up.set(1)

    async def _write(self, batch: list[Record]) -> None:
        conn = await self._connection()
        start = time.perf_counter()
        payloads = [r.payload for r in batch]
        conflicts: dict[Key, bytes] = {}
        try:
            result = await write_batch(conn, payloads)
            written, conflicts = result.written, result.conflicts
        except asyncpg.PostgresError as exc:
            if not is_data_error(exc):
                raise  # retried by the loop: the same batch can succeed later
            written = await self._sort_out(conn, payloads, exc)
        self.metrics.batch_seconds.observe(time.perf_counter() - start)
        if conflicts:
            self._set_aside_conflicts(payloads, conflicts)
        self.spool.commit(batch)
        self.keys.release(keyed_payloads(payloads))
        for kind, n in written.items():
            self.metrics.written.labels(kind).inc(n)

    def _set_aside_conflicts(self, payloads: list[bytes], stored: dict[Key, bytes]) -> None:
        """Acknowledged events whose id the database holds with other content (intake could not see it)."""
        for payload in payloads:
            event = orjson.loads(payload)
            key = (event["kind"], event.get("event_id", ""))
            if key in stored and digest(event) != stored[key]:
                error = ValueError(f"event_id {key[1]!r} is stored with other content")
                self._dead_letter(payload, error, "conflict")

    async def stored_digests(self, keys: list[Key], timeout_s: float = 0.5) -> dict[Key, bytes] | None:
        """What the database holds for these keys; None when it cannot say now (down, slow or busy).

        Bounded so that a slow database never holds intake up: at most ``timeout_s`` per request, lock wait
        included, and after a failure no look-ups for ``LOOKUP_PAUSE_S`` (the write-time check covers them)."""
        if not keys:
            return {}
        if not self.db_up or time.monotonic() < self._lookup_paused_until:
            return None
        try:
            return await asyncio.wait_for(self._look_up(keys, timeout_s), timeout_s)
        except Exception as exc:  # any failure (a bad URL too): a look-up only ever defers to the write-time check
            log.warning("cannot look up stored event ids (%r); conflicts are checked at write time", exc)
            self._lookup_paused_until = time.monotonic() + LOOKUP_PAUSE_S
            if self._lookup is not None:
                self._lookup.terminate()
            self._lookup = None
            return None

    async def _look_up(self, keys: list[Key], timeout_s: float) -> dict[Key, bytes]:
        async with self._lookup_lock:  # one connection, one query at a time
            if self._lookup is None or self._lookup.is_closed():
                self._lookup = await asyncpg.connect(self.dsn, timeout=timeout_s, command_timeout=timeout_s)
            return await stored_digests(self._lookup, keys)

    async def _sort_out(self, conn: asyncpg.Connection, payloads: list[bytes], exc: Exception) -> dict[str, int]:
        """A batch the database refused as data: store events one by one, dead-letter those that still fail."""
        log.error("batch of %d refused (%s); writing its events one by one", len(payloads), exc)
        for payload in payloads:
            try:
                conflicts = await insert_one_by_one(conn, [payload])
            except asyncpg.PostgresError as one:
                if not is_data_error(one):
                    raise
                self._dead_letter(payload, one, "database")
                continue
            if conflicts:  # the stored row wins, as on the batch path: this event is set aside, not dropped
                self._set_aside_conflicts([payload], conflicts)
        return {}  # counted as written only by the batch path; the dead letters are counted apart

    def _dead_letter(self, payload: bytes, exc: Exception, reason: str) -> None:
        path: Path = self.spool.directory / "dead-letter.jsonl"
        try:
            with os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab") as f:
                f.write(payload + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as failed:  # a full disk: the event stays in the log line below
            log.error("cannot write %s (%s): %s", path, failed, payload[:2000])
        self.metrics.rejected.labels(reason).inc()
        log.error("event dead-lettered to %s: %s", path, exc)

    async def close(self) -> None:
        await self._drop_connection()
        if self._lookup is not None:
            self._lookup.terminate()
            self._lookup = None
