"""Sustained events/s into PostgreSQL: batched writes (binary COPY into a staging table + INSERT ... ON CONFLICT,
what the writer does) against one INSERT per event, in one run on one fresh database; then the whole writer
end to end (HTTP intake -> fsync'd spool -> PostgreSQL) fed by concurrent clients.

    .venv/bin/python -m benchmarks.feedback_write            # 100k events: results/feedback_write.{md,json}
    .venv/bin/python -m benchmarks.feedback_write --quick    # 10k events
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from benchmarks.harness.facts import RESULTS_DIR, load_average, machine, machine_line, now_utc
from benchmarks.harness.tables import markdown_table, write_results
from feedback.migrate import migrate
from feedback.store import insert_one_by_one, write_batch
from recsys.stack.ports import free_port
from recsys.stack.postgres import LocalPostgres, default_data_dir
from recsys.stack.process import ServiceProcess


def make_events(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Half impressions of 10 items, half feedback events on them (a click and two skips)."""
    now = time.time()
    events: list[dict[str, Any]] = []
    for i in range(n // 2):
        request_id = uuid.UUID(int=(seed << 64) | i).hex
        items = [str((i * 7 + j) % 5000) for j in range(10)]
        user, group = str(i % 20_000), "AB"[i % 2]
        events.append({"kind": "impression", "request_id": request_id, "ts": now, "user_id": user, "group": group,
                       "model": "recsys_a", "model_version": 1, "items": items, "latency_ms": 1.5,
                       "fallback": False})  # fmt: skip
        events.append({"kind": "feedback", "event_id": uuid.uuid4().hex, "ts": now, "request_id": request_id,
                       "user_id": user, "group": group, "clicked_item": items[0], "skipped_items": items[1:3],
                       "inference_time_ms": 3.0})  # fmt: skip
    return events


async def count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT (SELECT count(*) FROM impressions) + (SELECT count(*) FROM feedback)"))


async def direct(dsn: str, n: int, n_single: int, batch: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        payloads = [orjson.dumps(e) for e in make_events(n, seed=1)]
        start = time.perf_counter()
        for i in range(0, len(payloads), batch):
            await write_batch(conn, payloads[i : i + batch])
        batched_s = time.perf_counter() - start
        assert await count(conn) == n
        singles = [orjson.dumps(e) for e in make_events(n_single, seed=2)]
        start = time.perf_counter()
        await insert_one_by_one(conn, singles)
        single_s = time.perf_counter() - start
        assert await count(conn) == n + n_single
        start = time.perf_counter()  # a replay of the same batch: every row is a duplicate, skipped
        await write_batch(conn, payloads[:batch])
        replay_s = time.perf_counter() - start
        assert await count(conn) == n + n_single
    finally:
        await conn.close()
    return {
        "batched_events_per_s": n / batched_s,
        "single_insert_events_per_s": n_single / single_s,
        "speedup": (n / batched_s) / (n_single / single_s),
        "duplicate_replay_ms_per_batch": replay_s * 1000,
    }


async def end_to_end(dsn: str, n: int, clients: int, per_post: int, tmp: Path) -> dict[str, float]:
    port, token = free_port(), secrets.token_urlsafe(16)
    env = dict(os.environ) | {"RECSYS_DATABASE_URL": dsn, "RECSYS_FEEDBACK_PORT": str(port),
                              "RECSYS_SPOOL_DIR": str(tmp / "spool"), "RECSYS_LOG_LEVEL": "WARNING",
                              "RECSYS_FEEDBACK_TOKEN": token}  # fmt: skip
    writer = ServiceProcess(
        name="writer", command=[sys.executable, "-m", "recsys", "serve", "feedback"],
        ready_url=f"http://127.0.0.1:{port}/healthz", log_path=tmp / "writer.log", env=env,
    )  # fmt: skip
    events = make_events(n, seed=3)
    bodies = [orjson.dumps({"events": events[i : i + per_post]}) for i in range(0, n, per_post)]
    conn = await asyncpg.connect(dsn)
    with writer:
        base = await count(conn)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)
        auth = {"authorization": f"Bearer {token}"}  # the writer's intake token
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=auth) as client:

            async def post() -> None:
                while not queue.empty():
                    response = await client.post("/events", content=queue.get_nowait(),
                                                 headers={"content-type": "application/json"})  # fmt: skip
                    assert response.status_code == 202, response.text

            start = time.perf_counter()
            await asyncio.gather(*(post() for _ in range(clients)))
            acked_s = time.perf_counter() - start
            while await count(conn) < base + n:
                await asyncio.sleep(0.01)
            stored_s = time.perf_counter() - start
    await conn.close()
    return {"acked_events_per_s": n / acked_s, "stored_events_per_s": n / stored_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k events instead of 100k")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    n = 10_000 if args.quick else 100_000
    n_single, batch, clients, per_post = (2_000 if args.quick else 5_000), 2_000, 4, 500
    postgres = LocalPostgres(default_data_dir().with_name(default_data_dir().name + "-bench"), port=free_port())
    load_before = load_average()
    with postgres, tempfile.TemporaryDirectory(prefix="feedback-bench-") as tmp:
        postgres.reset_database()
        figures = asyncio.run(direct(postgres.url, n, n_single, batch))
        figures |= asyncio.run(end_to_end(postgres.url, n, clients, per_post, Path(tmp)))
    rows = [
        ["batched: COPY + INSERT ON CONFLICT, 2,000 per transaction", f"{n:,}",
         f"{figures['batched_events_per_s']:,.0f}"],
        ["one INSERT per event (autocommit)", f"{n_single:,}", f"{figures['single_insert_events_per_s']:,.0f}"],
        [f"writer end to end: HTTP ({clients} clients x {per_post}/post) -> fsync'd spool: acknowledged", f"{n:,}",
         f"{figures['acked_events_per_s']:,.0f}"],
        ["writer end to end: stored in PostgreSQL", f"{n:,}", f"{figures['stored_events_per_s']:,.0f}"],
    ]  # fmt: skip
    goal = figures["stored_events_per_s"] >= 10_000
    markdown = "\n".join([
        f"# Feedback into PostgreSQL ({now_utc()})", "",
        markdown_table(["path", "events", "events/s"], rows), "",
        f"Batched vs one INSERT per event: **{figures['speedup']:.1f}x**. Replaying an already stored batch of "
        f"{batch:,} (every row a duplicate, skipped by the primary keys): "
        f"{figures['duplicate_replay_ms_per_batch']:.0f} ms.",
        f"Goal >= 10,000 events/s stored end to end: **{'met' if goal else 'NOT met'}**.",
        machine_line(load_before), "",
    ])  # fmt: skip
    write_results(args.out, "feedback_write" + ("-quick" if args.quick else ""), markdown,
                  {"figures": figures, "events": n, "machine": machine(), "load_average": load_before})  # fmt: skip
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
