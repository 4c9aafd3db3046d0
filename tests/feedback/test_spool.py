"""The writer's durable spool: what was appended survives a restart until committed, torn writes are cut, segments
rotate and are deleted once behind the checkpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from feedback.spool import Spool

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
