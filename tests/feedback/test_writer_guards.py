"""The writer's intake under abuse and faults, against a real writer process and PostgreSQL (issue 14): a full spool
disk (503 + Retry-After, not ready, idle CPU low, recovery with no acknowledged event lost), bodies far over the
cap (413 before they are read: memory measured), the intake token (401 without it) and an event_id re-sent with
other content (409; the same content stays an idempotent 202; what two replicas take at once is set aside at write
time)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests_support import query, small_tmpfs

from feedback.conflicts import digest
from feedback.metrics import WriterMetrics
from feedback.spool import Spool
from feedback.writer import DatabaseWriter
from gateway.events import EventSink
from gateway.metrics import GatewayMetrics
from recsys.core.limits import (
    EVENT_BATCH_MAX_BYTES,
    MAX_ID_CHARS,
    MAX_IMPRESSION_BYTES,
    MAX_TOP_K,
    WRITER_MAX_BODY_BYTES,
)
from recsys.stack.ports import free_port
from recsys.stack.process import ServiceProcess

pytestmark = pytest.mark.stack

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Writer:
    process: ServiceProcess
    url: str
    token: str
    database: str
    spool: Path

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def post(self, events: list[dict[str, Any]], token: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token if token is None else token}"}
        return httpx.post(self.url + "/events", json={"events": events}, headers=headers, timeout=10)


def start_writer(database: str, spool: Path, logs: Path, **settings: str) -> Writer:
    port, token = free_port(), secrets.token_urlsafe(16)
    env = dict(os.environ) | {
        "RECSYS_DATABASE_URL": database, "RECSYS_FEEDBACK_PORT": str(port), "RECSYS_SPOOL_DIR": str(spool),
        "RECSYS_FEEDBACK_TOKEN": token, "RECSYS_LOG_LEVEL": "INFO",
    } | settings  # fmt: skip
    process = ServiceProcess(
        "feedback-writer", [sys.executable, "-m", "feedback"], ready_url=f"http://127.0.0.1:{port}/healthz",
        log_path=logs / f"writer-{port}.log", env=env,
    ).start()  # fmt: skip
    return Writer(process, f"http://127.0.0.1:{port}", token, database, spool)


@pytest.fixture(scope="module")
def writer(log_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Writer]:
    work = tmp_path_factory.mktemp("writer")
    w = start_writer(log_database, work / "spool", work)
    try:
        yield w
    finally:
        w.process.stop()


def feedback(event_id: str, **content: Any) -> dict[str, Any]:
    return {"kind": "feedback", "event_id": event_id, "ts": time.time(), "request_id": "r-guards", "user_id": "u1",
            "group": "A", "clicked_item": "i1", "skipped_items": [], "inference_time_ms": 2.0} | content  # fmt: skip


def play(event_id: str, **content: Any) -> dict[str, Any]:
    return {"kind": "play", "event_id": event_id, "ts_ms": int(time.time() * 1000) - 1000, "user_id": "u1",
            "item_id": "i1", "ms_played": 1000} | content  # fmt: skip


def stored(w: Writer, table: str, ids: list[str]) -> dict[str, int]:
    rows = query(w.database, f"SELECT event_id, count(*) AS n FROM {table} WHERE event_id = ANY($1) GROUP BY 1", ids)
    return {r["event_id"]: r["n"] for r in rows}


def wait_stored(w: Writer, table: str, ids: list[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(stored(w, table, ids)) < len(set(ids)):
        assert time.monotonic() < deadline, f"not all of {len(ids)} events reached {table}"
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process has had, in bytes."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


# --- the intake token ------------------------------------------------------------------------------------------


def test_events_without_the_intake_token_are_refused_and_never_stored(writer: Writer) -> None:
    forged = [feedback(f"forged-{uuid.uuid4().hex}")]
    for token in ("wrong", writer.token + "x", writer.token[:-1]):
        response = writer.post(forged, token=token)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    no_header = httpx.post(writer.url + "/events", json={"events": forged}, timeout=10)
    assert no_header.status_code == 401
    barrier = feedback(f"barrier-{uuid.uuid4().hex}")  # spooled after the forged one would have been
    assert writer.post([barrier]).status_code == 202
    wait_stored(writer, "feedback", [barrier["event_id"]])
    assert stored(writer, "feedback", [forged[0]["event_id"]]) == {}


# --- body size ---------------------------------------------------------------------------------------------------


def _raw_post(url: str, head: str, body_chunks: Iterator[bytes]) -> bytes:
    """Sends a request by hand (so the client never waits to finish the body before reading) and returns the
    response the server gave, read once it stops reading the body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sock.settimeout(2)
        with contextlib.suppress(OSError):  # the server stops reading (timeout) or closes (reset, broken pipe)
            for chunk in body_chunks:
                sock.sendall(chunk)
        sock.settimeout(10)
        response = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        return response


def test_a_64_mb_body_is_refused_before_it_is_read(writer: Writer) -> None:
    """Regression (issue 14): a 64 MB body cost the writer +124 MB of memory before its 413 (its limit: 256 Mi)."""
    size = 64 * 1024 * 1024
    auth = f"authorization: Bearer {writer.token}\r\n"
    before = peak_rss(writer.pid)
    declared = _raw_post(
        writer.url,
        f"POST /events HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {size}\r\n\r\n",
        iter([]),  # no body at all: the answer must come from the header alone
    )
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b'"body_too_large"' in declared

    def chunked() -> Iterator[bytes]:
        block = b"x" * (1024 * 1024)
        for _ in range(64):
            yield b"%x\r\n" % len(block) + block + b"\r\n"
        yield b"0\r\n\r\n"

    chunked_head = "POST /events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
    streamed = _raw_post(writer.url, f"{chunked_head}{auth}content-type: application/json\r\n\r\n", chunked())
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    grown = peak_rss(writer.pid) - before
    print(f"writer peak RSS grew {grown / 2**20:.1f} MiB for two 64 MiB bodies")
    assert grown < 24 * 2**20  # at most the 8 MiB cap (and its join), not the body
    assert httpx.get(writer.url + "/healthz").status_code == 200


# --- the same event_id with other content ------------------------------------------------------------------------


def test_an_event_id_resent_with_other_content_gets_409_and_the_same_content_stays_202(writer: Writer) -> None:
    event_id = f"c-{uuid.uuid4().hex}"
    first = feedback(event_id)
    assert writer.post([first]).status_code == 202
    assert writer.post([first | {"ts": time.time() + 1, "inference_time_ms": 9.0}]).status_code == 202  # a retry
    other = writer.post([first | {"clicked_item": "i2"}])  # still in the spool, or already stored: refused alike
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "event_conflict"
    assert other.json()["error"]["event_ids"] == [event_id]
    wait_stored(writer, "feedback", [event_id])
    later = writer.post([feedback(f"new-{uuid.uuid4().hex}"), first | {"skipped_items": ["i9"]}])  # from the database
    assert later.status_code == 409, later.text
    assert later.json()["error"]["event_ids"] == [event_id]
    rows = query(
        writer.database, "SELECT clicked_item, skipped_items, digest FROM feedback WHERE event_id = $1", event_id
    )
    assert [(r["clicked_item"], r["skipped_items"]) for r in rows] == [("i1", [])]
    assert bytes(rows[0]["digest"]) == digest(first)


def test_plays_and_batches_conflict_too(writer: Writer) -> None:
    event_id = f"p-{uuid.uuid4().hex}"
    first = play(event_id)
    assert writer.post([first]).status_code == 202
    assert writer.post([first | {"ms_played": 5000}]).status_code == 202  # the same play reported longer: a retry
    response = writer.post([first | {"item_id": "i2"}])
    assert response.status_code == 409
    assert response.json()["error"]["event_ids"] == [event_id]
    twice = f"b-{uuid.uuid4().hex}"
    batch = writer.post([feedback(twice), feedback(twice, clicked_item="i3")])
    assert batch.status_code == 409
    assert batch.json()["error"]["event_ids"] == [twice]
    wait_stored(writer, "plays", [event_id])
    assert stored(writer, "feedback", [twice]) == {}  # nothing of a refused batch is spooled
    assert [
        r["item_id"] for r in query(writer.database, "SELECT item_id FROM plays WHERE event_id = $1", event_id)
    ] == ["i1"]


# --- a full spool disk -------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs for the spool (mounting needs root: CI runs as root)."""
    with small_tmpfs(tmp_path / "disk", "size=8m,mode=0700") as disk:
        yield disk


def fill(disk: Path) -> Path:
    """Writes a file until the disk is full (what another tenant of the volume could do)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    with filler.open("ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 512)
    return filler


def test_a_full_spool_disk_is_refused_with_503_backs_off_and_recovers_without_losing_events(
    log_database: str, small_disk: Path, tmp_path: Path
) -> None:
    """Regression (issue 14): with its spool disk full the writer answered 500 text/plain, spun a core at 100% while
    idle and /readyz said ready."""
    # batches wait 1.5 s, so the disk fills while acknowledged events are not yet in the database: their
    # checkpoint then cannot be written
    w = start_writer(log_database, small_disk / "spool", tmp_path, RECSYS_WRITE_INTERVAL_MS="1500")
    try:
        acked = [feedback(f"full-{uuid.uuid4().hex}") for _ in range(20)]
        for event in acked:
            assert w.post([event]).status_code == 202
        filler = fill(small_disk)
        wait_stored(w, "feedback", [e["event_id"] for e in acked])

        idle_s = 3.0
        cpu_before, t0 = cpu_seconds(w.pid), time.monotonic()
        time.sleep(idle_s)  # measuring idle CPU over an interval: nothing to wait for
        share = (cpu_seconds(w.pid) - cpu_before) / (time.monotonic() - t0)
        print(f"writer CPU while idle with a full disk: {share:.1%} of one core")
        assert share < 0.05  # the spin it had took a whole core when idle (13% of one on a machine at load 16)

        refused = w.post([feedback(f"refused-{uuid.uuid4().hex}")])
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"]["code"] == "spool_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        ready = httpx.get(w.url + "/readyz", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["ready"] is False

        filler.unlink()
        freed = time.monotonic()
        while httpx.get(w.url + "/readyz", timeout=5).status_code != 200:
            assert time.monotonic() - freed < 10, "the writer did not recover once the disk had room"
            time.sleep(0.02)
        print(f"ready again {time.monotonic() - freed:.2f} s after the disk had room")
        after = [feedback(f"after-{uuid.uuid4().hex}") for _ in range(20)]
        for event in after:
            assert w.post([event]).status_code == 202
        ids = [e["event_id"] for e in acked + after]
        wait_stored(w, "feedback", ids)
        w.process.kill()  # a crash now replays from the checkpoint written once the disk had room
        w.process.start()
        assert httpx.post(w.url + "/events", json={"events": [feedback("k")]}, timeout=5).status_code == 401
        counts = stored(w, "feedback", ids)
        assert len(counts) == len(ids)
        assert set(counts.values()) == {1}
    finally:
        w.process.stop()


def test_two_replicas_taking_one_event_id_with_two_contents_keep_the_first_stored_and_set_the_other_aside(
    log_database: str, tmp_path: Path
) -> None:
    """What intake cannot see (each replica knows its own spool; neither event is in the database yet) is caught at
    write time: one row is stored, the other event goes to its replica's dead-letter file and is counted."""
    slow = {"RECSYS_WRITE_INTERVAL_MS": "1500"}  # both events stay in their spools while the other arrives
    one = start_writer(log_database, tmp_path / "spool-1", tmp_path, **slow)
    two = start_writer(log_database, tmp_path / "spool-2", tmp_path, **slow)
    try:
        event_id = f"race-{uuid.uuid4().hex}"
        first, second = feedback(event_id), feedback(event_id, clicked_item="i2")
        assert one.post([first]).status_code == 202
        assert two.post([second]).status_code == 202
        wait_stored(one, "feedback", [event_id])

        def set_aside() -> list[Path]:
            return [w.spool / "dead-letter.jsonl" for w in (one, two) if (w.spool / "dead-letter.jsonl").exists()]

        deadline = time.monotonic() + 10
        while not set_aside():
            assert time.monotonic() < deadline, "the losing event was neither stored nor set aside"
            time.sleep(0.05)
        (letters,) = set_aside()
        (row,) = query(log_database, "SELECT clicked_item FROM feedback WHERE event_id = $1", event_id)
        loser = second if row["clicked_item"] == "i1" else first
        assert [orjson.loads(line) for line in letters.read_bytes().splitlines()] == [loser]
        owner = one if letters.parent == one.spool else two
        metrics = httpx.get(owner.url + "/metrics", timeout=5).text
        assert 'feedback_events_rejected_total{reason="conflict"} 1.0' in metrics
    finally:
        one.process.stop()
        two.process.stop()


# --- the gateway's impression batches against the writer's body cap (issue 14 follow-up) ---------------------------


def impression(request_id: str, items: list[str]) -> dict[str, Any]:
    """What the gateway's service records for one served list."""
    return {"kind": "impression", "request_id": request_id, "ts": time.time(), "user_id": "u1", "group": "A",
            "model": "recsys_a", "model_version": 1, "items": items, "latency_ms": 3.5, "fallback": False}  # fmt: skip


def stored_impressions(w: Writer, request_ids: list[str]) -> set[str]:
    rows = query(w.database, "SELECT request_id FROM impressions WHERE request_id = ANY($1)", request_ids)
    return {r["request_id"] for r in rows}


def deliver(w: Writer, impressions: list[dict[str, Any]], **sink: Any) -> None:
    """Records the impressions in a gateway's EventSink and lets it post them all to the writer."""

    async def run() -> None:
        events = EventSink(w.url, timeout_s=30, metrics=GatewayMetrics(), token=w.token, **sink)
        for one in impressions:
            assert events.record_impression(one)
        await events.close(drain_timeout_s=120)  # the last flush: every buffered impression, in posts
        assert events.pending == 0

    asyncio.run(run())


def wait_impressions(w: Writer, request_ids: list[str], timeout_s: float = 60.0) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while (found := stored_impressions(w, request_ids)) != set(request_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


LONG_LIST = [f"track-{i:06d}" for i in range(300)]


def test_a_full_batch_of_long_lists_is_posted_within_the_writers_cap_and_stored_whole(writer: Writer) -> None:
    """2,000 impressions of 300 items are about 9 MiB: one post by count was refused with 413 and dropped, so every
    click on those lists stayed an orphan. Posts are now capped by size, below the writer's cap."""
    tag = uuid.uuid4().hex[:8]
    impressions = [impression(f"full-{tag}-{n:04d}", LONG_LIST) for n in range(2000)]
    assert len(orjson.dumps({"events": impressions})) > WRITER_MAX_BODY_BYTES  # what one post by count would be
    deliver(writer, impressions)
    ids = [i["request_id"] for i in impressions]
    assert wait_impressions(writer, ids) == set(ids)


def test_a_post_the_writer_refuses_as_too_large_is_split_and_resent(writer: Writer) -> None:
    """A writer whose cap is below the gateway's batch size (a configuration drift): the writer answers 413 and
    closes the connection while the body is still being sent (the client sees the connection broken, not the 413),
    the sink halves the post until it passes, all are stored."""
    tag = uuid.uuid4().hex[:8]
    impressions = [impression(f"split-{tag}-{n:04d}", LONG_LIST) for n in range(2000)]
    deliver(writer, impressions, max_batch_bytes=4 * WRITER_MAX_BODY_BYTES)
    ids = [i["request_id"] for i in impressions]
    assert wait_impressions(writer, ids) == set(ids)


def test_one_impression_the_writer_refuses_costs_only_itself(writer: Writer) -> None:
    """An item id longer than the writer takes (a model's id, not a client's input) got the whole batch of 2,000
    refused with 422 and dropped; halving isolates it."""
    tag = uuid.uuid4().hex[:8]
    impressions = [impression(f"bad-{tag}-{n:03d}", ["a", "b"]) for n in range(300)]
    impressions[137] = impression(f"bad-{tag}-137", ["x" * (MAX_ID_CHARS + 1)])
    deliver(writer, impressions)
    good = [i["request_id"] for n, i in enumerate(impressions) if n != 137]
    assert wait_impressions(writer, good) == set(good)
    assert not stored_impressions(writer, [f"bad-{tag}-137"])


def test_an_impression_too_large_to_post_alone_is_refused_when_recorded() -> None:
    """The request limits rule it out (MAX_TOP_K ids of MAX_ID_CHARS characters, each at most 6 bytes of JSON);
    the sink still refuses one rather than drop it later, and the service answers 400 then."""
    worst = impression("r" * MAX_ID_CHARS, ["\x1f" * MAX_ID_CHARS] * MAX_TOP_K) | {"user_id": "\x1f" * MAX_ID_CHARS}
    assert len(orjson.dumps(worst)) <= MAX_IMPRESSION_BYTES < EVENT_BATCH_MAX_BYTES < WRITER_MAX_BODY_BYTES

    async def run() -> tuple[bool, bool, int]:
        events = EventSink("http://127.0.0.1:9", timeout_s=1, metrics=GatewayMetrics(), max_batch_bytes=64 * 1024)
        small = events.record_impression(impression("fits", ["a"]))
        large = events.record_impression(impression("too-large", ["x" * MAX_ID_CHARS] * 300))
        pending = events.pending
        await events.close(drain_timeout_s=1)  # nothing listens there: the drain gives up
        return small, large, pending

    assert asyncio.run(run()) == (True, False, 1)


# --- write-time conflicts on the sorting path, file modes of the spool ----------------------------------------------


def test_a_conflict_in_a_batch_the_database_refuses_as_data_is_set_aside_not_dropped(
    log_database: str, tmp_path: Path
) -> None:
    """A batch refused as data (SQLSTATE class 22/23) is written event by event with ON CONFLICT DO NOTHING: an
    event whose id is stored with other content vanished there without a dead letter or a count (issue 14 review)."""
    event_id = f"sorted-{uuid.uuid4().hex}"
    refused = impression(f"nul-{uuid.uuid4().hex}", ["a\x00b"])  # PostgreSQL text has no NUL: class 22
    other = feedback(event_id, clicked_item="i2")

    async def run() -> bytes:
        spool, metrics = Spool(tmp_path / "spool"), WriterMetrics()
        spool.open()
        writer = DatabaseWriter(spool, log_database, metrics)
        try:
            await spool.append([orjson.dumps(feedback(event_id))])
            await writer._write(spool.take(10))
            await spool.append([orjson.dumps(refused), orjson.dumps(other)])
            await writer._write(spool.take(10))
            assert not spool.pending
        finally:
            await writer.close()
            spool.close()
        return metrics.render()

    metrics = asyncio.run(run())
    (row,) = query(log_database, "SELECT clicked_item FROM feedback WHERE event_id = $1", event_id)
    assert row["clicked_item"] == "i1"  # the stored row wins
    letters = [orjson.loads(line) for line in (tmp_path / "spool" / "dead-letter.jsonl").read_bytes().splitlines()]
    assert letters == [refused, other]
    assert b'feedback_events_rejected_total{reason="conflict"} 1.0' in metrics
    assert b'feedback_events_rejected_total{reason="database"} 1.0' in metrics
