"""The writer's durable queue: accepted events are appended to segment files and fsync'd before they are
acknowledged; a checkpoint records how far PostgreSQL has them. After a crash, everything past the checkpoint is
replayed (PostgreSQL's primary keys make the replay idempotent), so an acknowledged event is never lost and is
stored once.

Layout of ``directory``: ``segment-<n>.jsonl`` (one JSON event per line, appended in order) and ``checkpoint``
(``<segment> <offset>``: everything before it is in the database). Segments wholly behind the checkpoint are
deleted. A trailing line without its newline was never acknowledged (the crash came before its fsync) and is cut.
Appends from concurrent requests share one fsync (group commit), so throughput does not pay one fsync per event.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int  # byte offset just past the record


@dataclass(frozen=True)
class Record:
    position: Position
    payload: bytes  # one JSON event, without the newline


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.pending: deque[Record] = deque()  # on disk (fsync'd), not yet in the database, in order
        self._unsynced: list[Record] = []  # written, waiting for the next fsync
        self.new_records = asyncio.Event()
        self._file: IO[bytes] | None = None
        self._segment = 0
        self._size = 0
        self._written = 0  # appends issued
        self._synced = 0  # appends covered by an fsync
        self._sync_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def _segment_path(self, n: int) -> Path:
        return self.directory / f"segment-{n:08d}.jsonl"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem.removeprefix("segment-")) for p in self.directory.glob("segment-*.jsonl"))

    def checkpoint(self) -> Position:
        try:
            segment, offset = (self.directory / "checkpoint").read_text().split()
            return Position(int(segment), int(offset))
        except FileNotFoundError:
            return Position(0, 0)

    def open(self) -> int:
        """Recovers after a restart: loads every record past the checkpoint into ``pending``; returns their count."""
        self.directory.mkdir(parents=True, exist_ok=True)
        start = self.checkpoint()
        segments = [n for n in self._segments() if n >= start.segment] or [start.segment]
        for n in segments:
            path = self._segment_path(n)
            data = path.read_bytes() if path.exists() else b""
            complete = data.rfind(b"\n") + 1
            if complete < len(data):  # an unacknowledged torn write at the end of the last segment
                with path.open("r+b") as f:
                    f.truncate(complete)
                    os.fsync(f.fileno())
            offset = start.offset if n == start.segment else 0
            while offset < complete:
                end = data.index(b"\n", offset)
                self.pending.append(Record(Position(n, end + 1), data[offset:end]))
                offset = end + 1
        self._segment = segments[-1]
        self._file = self._segment_path(self._segment).open("ab")
        self._size = self._file.tell()
        _fsync_dir(self.directory)
        if self.pending:
            self.new_records.set()
        return len(self.pending)

    async def append(self, payloads: list[bytes]) -> None:
        """Returns once every payload is on disk (fsync'd): only then may the caller acknowledge."""
        async with self._lock:
            if self._file is None:
                raise RuntimeError("spool is not open")
            if self._size >= self.segment_bytes:
                await self._rotate()
            for payload in payloads:
                self._file.write(payload + b"\n")
                self._size += len(payload) + 1
                self._unsynced.append(Record(Position(self._segment, self._size), payload))
            self._written += 1
            ticket = self._written
        while self._synced < ticket:
            if self._sync_task is None:
                self._sync_task = asyncio.create_task(self._sync())
            await asyncio.shield(self._sync_task)

    async def _sync(self) -> None:
        try:
            assert self._file is not None
            covered, records, self._unsynced = self._written, self._unsynced, []
            self._file.flush()
            await asyncio.to_thread(os.fsync, self._file.fileno())
            self.pending.extend(records)  # only durable records may reach the database and move the checkpoint
            self._synced = covered
            self.new_records.set()
        finally:
            self._sync_task = None

    async def _rotate(self) -> None:
        assert self._file is not None
        self._file.flush()
        await asyncio.to_thread(os.fsync, self._file.fileno())
        self._file.close()
        self._segment += 1
        self._file = self._segment_path(self._segment).open("ab")
        self._size = 0
        await asyncio.to_thread(_fsync_dir, self.directory)

    def take(self, limit: int) -> list[Record]:
        """The oldest records not yet committed (they stay pending until :meth:`commit`)."""
        return [self.pending[i] for i in range(min(limit, len(self.pending)))]

    def commit(self, records: list[Record]) -> None:
        """The records are in the database: move the checkpoint past them and drop segments behind it."""
        if not records:
            return
        for _ in records:
            self.pending.popleft()
        last = records[-1].position
        tmp = self.directory / "checkpoint.tmp"
        with tmp.open("w") as f:
            f.write(f"{last.segment} {last.offset}\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.directory / "checkpoint")
        for n in self._segments():
            if n < last.segment:
                self._segment_path(n).unlink()
        if not self.pending:
            self.new_records.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
