"""The writer's intake claims an event's id before spooling it (so that a concurrent request with other content gets
409); a request cancelled before its events were written must release that claim (issue 14 review: the ids of
an append cancelled while it waited for the spool stayed claimed until a restart, so a retry of the same id with
the corrected content got 409 for good). No database: intake checks the spool's own ids without one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from feedback.app import create_app
from feedback.metrics import WriterMetrics
from feedback.spool import Spool
from feedback.writer import DatabaseWriter

TOKEN = "fake-intake-token"


def feedback(event_id: str, clicked_item: str) -> dict[str, Any]:
    return {"kind": "feedback", "event_id": event_id, "ts": time.time(), "request_id": "r1", "user_id": "u1",
            "group": "A", "clicked_item": clicked_item, "skipped_items": []}  # fmt: skip


async def _cancelled_while_waiting_for_the_spool(directory: Path) -> tuple[int, int, int]:
    spool = Spool(directory)
    spool.open()
    writer = DatabaseWriter(spool, "postgresql://127.0.0.1:9/none", WriterMetrics())  # never connects: no lookups
    app = create_app(spool, writer, WriterMetrics(), token=TOKEN)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://writer", headers=headers) as client:
        async with spool._lock:  # another append is writing (a segment rotation holds it longest)
            request = asyncio.create_task(client.post("/events", json={"events": [feedback("e-1", "i1")]}))
            while not len(writer.keys):  # claimed: the request's next await is the spool's lock
                await asyncio.sleep(0)
            request.cancel()  # the client left
            await asyncio.gather(request, return_exceptions=True)
        claimed = len(writer.keys)
        corrected = await client.post("/events", json={"events": [feedback("e-1", "i2")]})
        retried = await client.post("/events", json={"events": [feedback("e-1", "i2")]})
    spool.close()
    return claimed, corrected.status_code, retried.status_code


def test_an_append_cancelled_before_it_was_written_releases_its_ids(tmp_path: Path) -> None:
    claimed, corrected, retried = asyncio.run(_cancelled_while_waiting_for_the_spool(tmp_path / "spool"))
    assert claimed == 0  # nothing was spooled: nothing stays claimed
    assert corrected == 202  # was 409: the cancelled request's content still held the id
    assert retried == 202  # the same content again is a retry


async def _written_then_cancelled(directory: Path) -> tuple[int, list[bytes]]:
    """The other side: an append written before the client left is kept (it is on disk and will be stored), so
    its id stays claimed until the database has it."""
    spool = Spool(directory)
    spool.open()
    writer = DatabaseWriter(spool, "postgresql://127.0.0.1:9/none", WriterMetrics())
    app = create_app(spool, writer, WriterMetrics(), token=TOKEN)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://writer", headers=headers) as client:
        request = asyncio.create_task(client.post("/events", json={"events": [feedback("e-2", "i1")]}))
        while not spool._unsynced and not spool.pending:  # written, its fsync not yet awaited
            await asyncio.sleep(0)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
        while not spool.pending:  # the fsync completes without its caller
            await asyncio.sleep(0.01)
        claimed = len(writer.keys)
    spool.close()
    return claimed, [r.payload for r in spool.pending]


def test_an_append_written_before_the_client_left_keeps_its_ids_claimed(tmp_path: Path) -> None:
    claimed, pending = asyncio.run(_written_then_cancelled(tmp_path / "spool"))
    assert claimed == 1
    assert len(pending) == 1
    assert b'"e-2"' in pending[0]
