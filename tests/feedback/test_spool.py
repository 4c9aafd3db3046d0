"""The writer's durable spool: what was appended survives a restart until committed, torn writes are cut, segments
rotate and are deleted once behind the checkpoint; a full disk (a real 1 MiB tmpfs) is refused, cut clean and
recovered from."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests_support import small_tmpfs

from feedback.metrics import WriterMetrics
from feedback.spool import Spool, SpoolUnavailableError
from feedback.writer import DatabaseWriter

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [f'{{"n":{i}}}'.encode() for i in range(start, start + n)]


def test_appended_records_are_pending_after_a_restart_until_committed(tmp_path: Path) -> None:
    async def first() -> None:
        spool = Spool(tmp_path)
        spool.open()
        await spool.append(payloads(3))
        await spool.append(payloads(2, 3))
        assert [r.payload for r in spool.pending] == payloads(5)
        spool.commit(spool.take(2))
        spool.close()  # closing only fsyncs: the file holds what a crash would leave after the acks

    run(first())
    again = Spool(tmp_path)
    assert again.open() == 3
    assert [r.payload for r in again.pending] == payloads(3, 2)
    again.commit(again.take(10))
    again.close()
    last = Spool(tmp_path)
    assert last.open() == 0
    last.close()


def test_a_torn_last_line_is_cut_and_appending_goes_on_after_it(tmp_path: Path) -> None:
    async def write() -> None:
        spool = Spool(tmp_path)
        spool.open()
        await spool.append(payloads(2))
        spool.close()

    run(write())
    (segment,) = tmp_path.glob("segment-*.jsonl")
    with segment.open("ab") as f:
        f.write(b'{"n":99, "half')  # the crash came before the newline (and before any ack)

    async def reopen() -> list[bytes]:
        spool = Spool(tmp_path)
        assert spool.open() == 2
        await spool.append(payloads(1, 2))
        spool.close()
        again = Spool(tmp_path)
        again.open()
        again.close()
        return [r.payload for r in again.pending]

    assert run(reopen()) == payloads(3)
    assert b"half" not in segment.read_bytes()


def test_segments_rotate_and_are_deleted_behind_the_checkpoint(tmp_path: Path) -> None:
    async def fill() -> Spool:
        spool = Spool(tmp_path, segment_bytes=32)
        spool.open()
        for i in range(10):
            await spool.append(payloads(2, 2 * i))
        return spool

    spool = run(fill())
    assert len(list(tmp_path.glob("segment-*.jsonl"))) >= 4
    spool.commit(spool.take(15))
    remaining = sorted(tmp_path.glob("segment-*.jsonl"))
    assert len(remaining) <= 2
    spool.close()
    again = Spool(tmp_path, segment_bytes=32)
    assert again.open() == 5
    assert [r.payload for r in again.pending] == payloads(5, 15)
    again.close()


def test_concurrent_appends_keep_one_order_and_positions_increase(tmp_path: Path) -> None:
    async def many() -> Spool:
        spool = Spool(tmp_path)
        spool.open()
        await asyncio.gather(*(spool.append(payloads(3, 3 * i)) for i in range(50)))
        return spool

    spool = run(many())
    positions = [r.position for r in spool.pending]
    assert len(positions) == 150
    assert positions == sorted(positions)
    assert sorted(r.payload for r in spool.pending) == sorted(payloads(150))
    spool.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (mounting needs root: CI runs as root)."""
    with small_tmpfs(tmp_path / "disk", "size=1m") as disk:
        yield disk


def test_a_write_that_meets_a_full_disk_is_cut_off_and_refused(tiny_disk: Path) -> None:
    async def scenario() -> tuple[int, int]:
        spool = Spool(tiny_disk, reserve_bytes=0)
        spool.open()
        await spool.append(payloads(3))
        (segment,) = tiny_disk.glob("segment-*.jsonl")
        size = segment.stat().st_size
        filler = tiny_disk / "filler"
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
            f.write(b"\0" * (1024 * 1024 - 3 * 4096))  # leaves a few pages: the big append fails half-way
        with pytest.raises(SpoolUnavailableError):
            await spool.append([b'{"big": "' + b"x" * 200_000 + b'"}'])
        assert segment.stat().st_size == size  # no torn line left between whole ones
        with pytest.raises(SpoolUnavailableError):  # refused at once while the fault lasts: no disk write
            await spool.append(payloads(1, 3))
        filler.unlink()
        deadline = time.monotonic() + 5
        while not spool.probe():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await spool.append(payloads(1, 3))
        spool.close()
        return len(spool.pending), size

    pending, _ = run(scenario())
    assert pending == 4
    again = Spool(tiny_disk)
    assert again.open() == 4
    assert [r.payload for r in again.pending] == payloads(4)
    again.close()


def test_a_spool_that_filled_its_own_disk_gives_the_room_back_once_drained(tiny_disk: Path) -> None:
    async def scenario() -> Spool:
        spool = Spool(tiny_disk, reserve_bytes=64 * 1024)
        spool.open()
        with contextlib.suppress(SpoolUnavailableError):
            for i in range(10_000):
                await spool.append([b'{"n": %d, "pad": "%s"}' % (i, b"y" * 1000)])
        assert spool.fault is not None
        assert len(spool.pending) > 500
        spool.commit(spool.take(len(spool.pending)))  # all in the database now
        deadline = time.monotonic() + 5
        while not spool.probe():  # the drained segment is released, the checkpoint written
            assert time.monotonic() < deadline, spool.fault
            await asyncio.sleep(0.02)
        await spool.append(payloads(2))
        return spool

    spool = run(scenario())
    spool.close()
    again = Spool(tiny_disk)
    assert again.open() == 2
    assert [r.payload for r in again.pending] == payloads(2)
    again.close()


def test_the_spool_and_its_dead_letters_are_readable_by_the_writers_user_only(tmp_path: Path) -> None:
    """Issue 14 review: ``checkpoint`` and ``dead-letter.jsonl`` were created under the umask (0644) and the folder
    0755, so any local user could read listeners' events. Files left readable by an older writer are narrowed."""
    directory = tmp_path / "spool"
    (tmp_path / "old").mkdir(mode=0o755)
    (tmp_path / "old" / "dead-letter.jsonl").write_bytes(b"{}\n")
    (tmp_path / "old" / "dead-letter.jsonl").chmod(0o644)
    (tmp_path / "old" / "checkpoint").write_text("0 0\n")
    (tmp_path / "old" / "checkpoint").chmod(0o644)
    previous = os.umask(0o022)  # the usual default; the modes must not depend on it
    try:
        for where in (directory, tmp_path / "old"):

            async def write(where: Path = where) -> None:
                spool = Spool(where)
                spool.open()
                await spool.append(payloads(2))
                spool.commit(spool.take(2))  # writes the checkpoint
                writer = DatabaseWriter(spool, "postgresql://127.0.0.1:9/none", WriterMetrics())
                writer._dead_letter(b'{"n":0}', ValueError("refused"), "database")
                spool.close()

            run(write())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in where.iterdir()}
            assert stat.S_IMODE(where.stat().st_mode) == 0o700, where
            assert {"checkpoint", "dead-letter.jsonl"} <= modes.keys()
            assert set(modes.values()) == {0o600}, modes
    finally:
        os.umask(previous)
