"""The writer's durable queue: accepted events are appended to segment files and fsync'd before they are
acknowledged; a checkpoint records how far PostgreSQL has them. After a crash, everything past the checkpoint is
replayed (PostgreSQL's primary keys make the replay idempotent), so an acknowledged event is never lost and is
stored once.

Layout of ``directory``: ``segment-<n>.jsonl`` (one JSON event per line, appended in order) and ``checkpoint``
(``<segment> <offset>``: everything before it is in the database). Segments wholly in the database are deleted
(before the checkpoint is written, so a full disk gets the room back first); a checkpoint naming a deleted segment
means "from the next one on". Only the writer's user can read them: files 0600 and the folder 0700, whatever the
umask (events hold listeners' ids and what they played). A trailing line without its newline was never acknowledged
(the crash came before its fsync) and is cut. Appends from concurrent requests share one fsync (group commit), so
throughput does not pay one fsync per event.

A full disk (or any other write failure) is a *fault*, not a crash: the append that met it is cut off the file and
refused with :class:`SpoolUnavailableError` (the intake answers 503 with Retry-After), and so is every append while
the fault lasts, without touching the disk. :meth:`Spool.probe` (called by each append, the readiness check and the
database writer's idle loop) looks again at most every ``backoff`` (0.1 s doubling to 1 s): once the disk has
``reserve_bytes`` free and a deferred checkpoint could be written, the fault clears. An append is also refused
before writing when the disk has less than its size plus ``reserve_bytes`` free, so the checkpoint always has room.
Events that were refused because their fsync failed may still be on disk and stored after a restart: a refusal
means "not acknowledged", and a client's retry with the same ``event_id`` is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recsys.core.errors import RecsysError

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
#: Free space kept on the spool's disk for the checkpoint and dead letters: appends that would eat into it wait.
RESERVE_BYTES = 1024 * 1024
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0


class SpoolUnavailableError(RecsysError):
    """The spool cannot take events now (its disk is full or failing); ``retry_after_s``: when to try again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, order=True)
class Position:
    segment: int
    offset: int  # byte offset just past the record


@dataclass(frozen=True)
class Record:
    position: Position
    payload: bytes  # one JSON event, without the newline


@dataclass
class _Append:
    """One append's records and the future its caller waits on until an fsync covers them (or fails)."""

    records: list[Record]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of a file only its owner can read (events hold listeners' ids): created 0600, and an older file
    left readable by others (written under the default umask before) is narrowed to 0600 too."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def make_private_dir(directory: Path) -> None:
    """Creates ``directory`` 0700; one of ours that is readable by others is narrowed (a mounted volume owned by
    another user is left as its owner set it)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        directory.chmod(0o700)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class Spool:
    def __init__(
        self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES, reserve_bytes: int = RESERVE_BYTES
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.reserve_bytes = reserve_bytes
        self.pending: deque[Record] = deque()  # on disk (fsync'd), not yet in the database, in order
        self.new_records = asyncio.Event()
        self._unsynced: list[_Append] = []  # written, waiting for the next fsync
        self._fd: int | None = None
        self._segment = 0
        self._size = 0
        self._sync_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.fault: str | None = None  # why appends are refused now (None: they are accepted)
        self._retry_at = 0.0
        self._backoff = FIRST_BACKOFF_S
        self._checkpoint_due: Position | None = None  # committed, but the checkpoint file could not be written

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
        make_private_dir(self.directory)
        start = self.checkpoint()
        segments = [n for n in self._segments() if n >= start.segment]
        if not segments:  # a checkpoint inside a deleted segment: everything up to its end is in the database
            segments = [start.segment + 1 if start.offset else start.segment]
        for n in segments:
            path = self._segment_path(n)
            data = path.read_bytes() if path.exists() else b""
            complete = data.rfind(b"\n") + 1
            if complete < len(data):  # an unacknowledged torn write at the end of a segment
                with path.open("r+b") as f:
                    f.truncate(complete)
                    os.fsync(f.fileno())
            offset = start.offset if n == start.segment else 0
            while offset < complete:
                end = data.index(b"\n", offset)
                self.pending.append(Record(Position(n, end + 1), data[offset:end]))
                offset = end + 1
        self._open_segment(segments[-1])
        if self.pending:
            self.new_records.set()
        return len(self.pending)

    def _open_segment(self, n: int) -> None:
        """Makes segment ``n`` the one appended to; the previous one is closed only once the new one is open."""
        fd = open_private(self._segment_path(n), os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._segment, self._size = fd, n, size

    async def append(self, payloads: list[bytes], *, unwritten: Callable[[], object] | None = None) -> None:
        """Returns once every payload is on disk (fsync'd): only then may the caller acknowledge.

        Raises :class:`SpoolUnavailableError` (nothing acknowledged) when the disk is full or failing. ``unwritten``
        is called once if the payloads will not reach the database from this spool: refused, failed, or cancelled
        before they were written (while waiting for another append) - also when the caller is gone by then, which
        a caller's own ``except`` cannot see. A written append that the caller stops waiting for is not undone."""
        try:
            pending = await self._write(payloads)
        except BaseException:
            if unwritten is not None:
                unwritten()
            raise
        if unwritten is not None:
            pending.done.add_done_callback(lambda done: unwritten() if done.cancelled() or done.exception() else None)
        await asyncio.shield(pending.done)

    async def _write(self, payloads: list[bytes]) -> _Append:
        """Writes (not yet fsync'd) under the lock; the returned append's ``done`` resolves at its fsync."""
        data = b"".join(p + b"\n" for p in payloads)
        async with self._lock:
            if self._fd is None:
                raise RuntimeError("spool is not open")
            self._check_room(len(data))
            start = self._size
            try:
                if self._size >= self.segment_bytes:
                    await self._rotate()
                    start = self._size
                _write_all(self._fd, data)
            except OSError as exc:
                self._cut(start)
                raise self._fail(exc) from None
            records, offset = [], start
            for payload in payloads:
                offset += len(payload) + 1
                records.append(Record(Position(self._segment, offset), payload))
            self._size = offset
            pending = _Append(records)
            self._unsynced.append(pending)
            if self._sync_task is None:
                self._sync_task = asyncio.create_task(self._sync())
        return pending

    async def _sync(self) -> None:
        """Group commit: one fsync for every append written meanwhile, again while more wait."""
        try:
            while self._unsynced:
                batch, self._unsynced = self._unsynced, []
                assert self._fd is not None
                try:
                    await asyncio.to_thread(os.fsync, self._fd)
                except OSError as exc:
                    error = self._fail(exc)
                    for a in batch:
                        if not a.done.done():
                            a.done.set_exception(error)
                    continue
                for a in batch:  # only durable records may reach the database and move the checkpoint
                    self.pending.extend(a.records)
                    if not a.done.done():
                        a.done.set_result(None)
                self.new_records.set()
        finally:
            self._sync_task = None

    async def _rotate(self) -> None:
        """A new segment, once every append to this one is settled (called holding the lock: none can start)."""
        while self._sync_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._sync_task)
        self._open_segment(self._segment + 1)

    def _cut(self, size: int) -> None:
        """Cuts a failed append's partial bytes off the file (so no torn line sits between whole ones)."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, size)
        except OSError:  # the next append starts a new segment; the torn tail is cut at the next open
            log.exception("cannot cut a failed append off %s", self._segment_path(self._segment))
            self._size = max(self._size, self.segment_bytes)

    # -- faults ----------------------------------------------------------------------------------------------------

    def _fail(self, exc: OSError) -> SpoolUnavailableError:
        """Enters (or prolongs) a fault: appends are refused without touching the disk until the next probe."""
        reason = f"spool {self.directory} cannot write: {exc.strerror or exc}"
        if self.fault is None:
            log.error("%s; refusing events until it can", reason)
            self._backoff = FIRST_BACKOFF_S
        else:
            self._backoff = min(MAX_BACKOFF_S, self._backoff * 2)
        self.fault = reason
        self._retry_at = time.monotonic() + self._backoff
        return self.unavailable()

    def unavailable(self) -> SpoolUnavailableError:
        return SpoolUnavailableError(self.fault or "spool unavailable", self._backoff)

    def _check_room(self, size: int) -> None:
        if not self.probe():
            raise self.unavailable()
        free = free_bytes(self.directory)
        if free < size + self.reserve_bytes:
            raise self._fail(OSError(errno.ENOSPC, f"{free} bytes free, {size + self.reserve_bytes} needed"))

    def probe(self) -> bool:
        """Whether appends are accepted now. In a fault, looks again (at most once per backoff): it clears once
        the disk has room and a deferred checkpoint could be written."""
        if self.fault is None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._release_drained_segment()
            if self._checkpoint_due is not None:
                self._write_checkpoint(self._checkpoint_due)
            free = free_bytes(self.directory)
            if free < self.reserve_bytes:
                raise OSError(errno.ENOSPC, f"{free} bytes free, {self.reserve_bytes} needed")
        except OSError as exc:
            self._fail(exc)
            return False
        log.warning("spool %s writable again; accepting events", self.directory)
        self.fault, self._backoff = None, FIRST_BACKOFF_S
        return True

    @property
    def retry_after_s(self) -> int:
        """Whole seconds for a Retry-After header."""
        return max(1, math.ceil(self._backoff))

    def _release_drained_segment(self) -> None:
        """With every event in the database, a fault is no reason to keep the current segment's bytes: a new
        segment takes over and the old one is deleted (the spool itself may be what filled the disk)."""
        if self.pending or self._unsynced or self._sync_task is not None or self._lock.locked() or not self._size:
            return
        old = self._segment
        self._open_segment(old + 1)
        self._segment_path(old).unlink(missing_ok=True)

    # -- the database side -------------------------------------------------------------------------------------------

    def take(self, limit: int) -> list[Record]:
        """The oldest records not yet committed (they stay pending until :meth:`commit`)."""
        return [self.pending[i] for i in range(min(limit, len(self.pending)))]

    def commit(self, records: list[Record]) -> None:
        """The records are in the database: drop segments wholly behind them, then move the checkpoint past them.

        A checkpoint that cannot be written (full disk) is retried by :meth:`probe`; until then a restart replays
        from the older one, which PostgreSQL's keys make harmless."""
        if not records:
            return
        for _ in records:
            self.pending.popleft()
        if not self.pending:
            self.new_records.clear()
        last = records[-1].position
        for n in self._segments():
            if n < last.segment:
                self._segment_path(n).unlink()
        try:
            self._write_checkpoint(last)
        except OSError as exc:
            self._checkpoint_due = last
            self._fail(exc)

    def _write_checkpoint(self, position: Position) -> None:
        tmp = self.directory / "checkpoint.tmp"
        try:
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
                f.write(f"{position.segment} {position.offset}\n")
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.directory / "checkpoint")
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self._checkpoint_due = None

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
