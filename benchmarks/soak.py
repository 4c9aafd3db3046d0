"""The whole local stack under sustained load, then faults under load: the figures issue 7 asks for.

1. Find the highest sustainable rate: wrk through NGINX with a realistic mix (every recommendation is followed
   by its feedback: a click or skips), 10 s at each concurrency; the best throughput with no error and p99 under
   250 ms wins.
2. Hold it for ``--minutes`` (default 5): requests/s, p50/p99, errors, and the resident memory of every process
   of the stack at the start and at the end (growth per process).
3. Faults, each under load at the same concurrency: Triton SIGKILLed and restarted (answers during the outage,
   the slowest answer, time to recover); PostgreSQL stopped for 30 s (events spooled meanwhile, time to drain,
   acknowledged events missing afterwards); a gateway restarted behind NGINX (answers other than 200).

    .venv/bin/python -m benchmarks.soak                # 5 min: results/soak.{md,json}
    .venv/bin/python -m benchmarks.soak --minutes 1    # results/soak-1min.{md,json}
    .venv/bin/python -m benchmarks.soak --quick        # small catalog, short phases: results/soak-quick.*
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from benchmarks.harness.catalog import build_and_publish, catalog_args
from benchmarks.harness.facts import RESULTS_DIR, load_average, machine, machine_line, now_utc
from benchmarks.harness.tables import markdown_table, write_results
from benchmarks.harness.wrk import run_wrk
from recsys.stack.local import LocalStack, StackConfig, StackPorts
from recsys.stack.memory import descendants, process_memory
from trainer.triton.repository import load_all

MIX_LUA = """
-- Every recommendation is followed by its feedback (a click on the first item every third time, else skips).
-- The feedback names the thread's last user, which may belong to another connection's request: the writer then
-- stores it flagged as a mismatch (it still travels the whole path, which is what the soak measures).
local n = 0
local pending = nil
local users = 2000
request = function()
  if pending then
    local body = pending
    pending = nil
    return wrk.format("POST", "/feedback", {["Content-Type"] = "application/json"}, body)
  end
  n = n + 1
  local id = tostring((n * 7919) % users + 1)
  last_user = id
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json", ["X-User-Id"] = id},
                    '{"user_id":"' .. id .. '","top_k":10}')
end
response = function(status, headers, body)
  if status == 200 and body then
    local rid = body:match('"request_id":"(%x+)"')
    local group = body:match('"group":"(%w+)"')
    local first = body:match('"item_id":"([^"]+)"')
    if rid and group and first then
      local click = (n % 3 == 0) and ('"clicked_item":"' .. first .. '"') or ('"skipped_items":["' .. first .. '"]')
      pending = '{"user_id":"' .. last_user .. '","group":"' .. group .. '","request_id":"' .. rid .. '",'
        .. click .. '}'
    end
  end
end
"""


def wrk(url: str, script: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """One wrk run through NGINX as a JSON-ready dict (rps, requests, p50_ms, p99_ms, errors)."""
    return asdict(run_wrk(url, script, concurrency, seconds, timeout_s=5))


def stack_memory(stack: LocalStack) -> dict[str, tuple[int, int]]:
    """(VmRSS, RssAnon) KiB per process of the stack, named by role (a server's children summed with it)."""
    roots: dict[str, int | None] = {"triton (server + python stubs)": stack.triton.pid,
                                    "feedback writer": stack.writer.pid}  # fmt: skip
    roots |= {g.name: g.pid for g in stack.gateways}
    roots["nginx (master + workers)"] = stack.nginx.pid if stack.nginx is not None else None
    pg = stack.postgres.data_dir / "postmaster.pid"
    roots["postgresql (all backends)"] = int(pg.read_text().split()[0]) if pg.exists() else None
    out = {}
    for name, pid in roots.items():
        if pid:
            parts = [process_memory(p) for p in descendants(pid)]
            out[name] = (sum(m.rss_kib for m in parts), sum(m.anon_kib for m in parts))
    return out


async def count_feedback(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM feedback"))
    finally:
        await conn.close()


def writer_state(stack: LocalStack) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(stack.feedback_url + "/readyz", timeout=5).json()
    return result


def run_in_background(url: str, script: Path, concurrency: int, seconds: float) -> tuple[Any, list[dict[str, float]]]:
    import threading

    box: list[dict[str, float]] = []
    thread = threading.Thread(target=lambda: box.append(wrk(url, script, concurrency, seconds)), daemon=True)
    thread.start()
    return thread, box


@dataclass(frozen=True)
class Pace:
    """Seconds of each phase: the soak's own, or ``--quick``'s, which only proves the benchmark runs."""

    sweep_s: int = 10  # each concurrency of the sweep
    warm_up_s: int = 60  # memory growth is measured from the first sample after it
    sample_s: int = 15  # memory sampling interval
    before_fault_s: int = 5  # load before each fault
    triton_window_s: int = 30
    postgres_down_s: int = 30
    postgres_window_s: int = 40
    gateway_down_s: int = 5
    gateway_window_s: int = 20


QUICK = Pace(sweep_s=3, warm_up_s=5, sample_s=5, before_fault_s=2, triton_window_s=15, postgres_down_s=5,
             postgres_window_s=10, gateway_down_s=2, gateway_window_s=6)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, help="sustained load (default 5; --quick 0.25)")
    parser.add_argument("--quick", action="store_true", help="2,000 x 5,000 catalog, short phases: soak-quick.*")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    pace = QUICK if args.quick else Pace()
    args.minutes = args.minutes if args.minutes is not None else (0.25 if args.quick else 5.0)
    catalog = catalog_args(2_000, 5_000) if args.quick else catalog_args(20_000, 50_000)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        build_and_publish(catalog, work, work / "publish.log")
        script = work / "mix.lua"
        script.write_text(MIX_LUA)
        config = StackConfig(model_repository=work / "repository", workdir=work / "stack",
                             ports=StackPorts.free(gateways=2), gateways=2,
                             postgres_dir=Path(str(work / "pg")) if os.geteuid() else None)  # fmt: skip
        if os.geteuid() == 0:
            config.postgres_dir = Path("/var/tmp/recsys-postgres-soak")
        stack = LocalStack(config)
        stack.postgres.start()
        stack.postgres.reset_database()
        with stack:
            url = stack.nginx_url
            print("sweeping concurrency ...", flush=True)
            sweep = {c: wrk(url, script, c, pace.sweep_s) for c in (4, 8, 16, 32)}
            good = {c: r for c, r in sweep.items() if r["errors"] == 0 and r["p99_ms"] < 250}
            best = max(good or sweep, key=lambda c: (good or sweep)[c]["rps"])
            print(f"sustaining concurrency {best} for {args.minutes} min ...", flush=True)
            wrk(url, script, best, 5)  # warm
            thread, box = run_in_background(url, script, best, args.minutes * 60)
            began, series = time.monotonic(), []
            while thread.is_alive():  # "start": the first sample after the warm-up
                series.append((round(time.monotonic() - began), stack_memory(stack)))
                thread.join(pace.sample_s)
            soak = box[0]
            stack.wait_drained(120)
            series.append((round(time.monotonic() - began), stack_memory(stack)))
            memory_start = next((m for t, m in series if t >= pace.warm_up_s), series[0][1])
            memory_end = series[-1][1]
            faults: dict[str, Any] = {}

            print("fault: Triton killed under load ...", flush=True)
            thread, box = run_in_background(url, script, best, pace.triton_window_s)
            time.sleep(pace.before_fault_s)
            killed_at = time.monotonic()
            os.killpg(stack.triton.pid or 0, signal.SIGKILL)
            stack.triton.stop()
            stack.triton.start()
            load_all(stack.triton, stack.config.model_repository)
            back = time.monotonic()
            while httpx.post(stack.gateway_url + "/recommend", json={"user_id": "1"}).status_code != 200:
                time.sleep(0.05)
            faults["triton_killed"] = {"seconds_down_until_ready": back - killed_at,
                                       "seconds_until_first_200_after_ready": time.monotonic() - back}  # fmt: skip
            thread.join()
            faults["triton_killed"] |= box[0]

            print(f"fault: PostgreSQL stopped {pace.postgres_down_s} s under load ...", flush=True)
            thread, box = run_in_background(url, script, best, pace.postgres_window_s)
            time.sleep(pace.before_fault_s)
            stack.postgres.stop()
            time.sleep(pace.postgres_down_s)
            spooled = writer_state(stack)["spooled"]
            stack.postgres.start()
            restarted = time.monotonic()
            thread.join()
            stack.wait_drained(300)
            drained = time.monotonic() - restarted
            after = {"spooled_at_restart": spooled, "drained_s_after_restart": drained}
            faults[f"postgres_down_{pace.postgres_down_s}s"] = box[0] | after

            print("fault: a gateway restarted behind NGINX ...", flush=True)
            thread, box = run_in_background(url, script, best, pace.gateway_window_s)
            time.sleep(pace.before_fault_s)
            stack.gateways[0].stop()
            time.sleep(pace.gateway_down_s)
            stack.gateways[0].start()
            thread.join()
            faults["gateway_restarted"] = box[0]
            stored = asyncio.run(count_feedback(stack.database_url))

    growth = {name: (memory_end[name][1] - memory_start[name][1]) / memory_start[name][1] for name in memory_start}
    rss_growth = {name: (memory_end[name][0] - memory_start[name][0]) / memory_start[name][0] for name in memory_start}
    rows = [
        [name, *(f"{memory_start[name][i] / 1024:.0f}" for i in (0,)), f"{memory_end[name][0] / 1024:.0f}",
         f"{rss_growth[name]:+.1%}", f"{memory_start[name][1] / 1024:.0f}", f"{memory_end[name][1] / 1024:.0f}",
         f"{growth[name]:+.1%}"]
        for name in memory_start
    ]  # fmt: skip
    sweep_rows = [[str(c), f"{r['rps']:,.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['errors']:.0f}"]
                  for c, r in sweep.items()]  # fmt: skip
    fault_rows = [[name, f"{f['rps']:,.0f}", f"{f['p99_ms']:.1f}", f"{f['errors']:.0f}",
                   "; ".join(f"{k} {v:.1f}" for k, v in f.items() if k not in {"rps", "p50_ms", "p99_ms", "errors",
                                                                              "requests"})]
                  for name, f in faults.items()]  # fmt: skip
    markdown = "\n".join([
        f"# Soak and faults ({now_utc()})", "",
        "Whole local stack: NGINX -> 2 gateways -> Triton (ALS, 20,000 users x 50,000 items, 64 factors), "
        "feedback -> writer -> PostgreSQL; wrk through NGINX, every recommendation followed by its feedback.", "",
        f"## Finding the sustainable rate ({pace.sweep_s} s each)", "",
        markdown_table(["concurrency", "req/s", "p50 ms", "p99 ms", "errors"], sweep_rows), "",
        f"## Sustained: concurrency {best} for {args.minutes:g} min", "",
        f"**{soak['rps']:,.0f} req/s** ({soak['requests']:,.0f} requests), p50 {soak['p50_ms']:.1f} ms, "
        f"p99 {soak['p99_ms']:.1f} ms, **{soak['errors']:.0f} errors**; {stored:,} feedback rows stored in all.", "",
        markdown_table(["process", "RSS start MiB", "RSS end MiB", "RSS growth", "private start MiB",
                        "private end MiB", "private growth"], rows), "",
        f"Largest growth of private (anonymous) memory: {max(growth.values()):+.1%} (goal < 5%), from the first "
        f"sample after a {pace.warm_up_s} s warm-up to the end (queues drained). RSS also counts shared pages: "
        "PostgreSQL's grows as its shared buffers fill with the tables the soak writes. "
        f"Private MiB every {pace.sample_s} s:", "",
        markdown_table(["s", *memory_start], [[str(t), *(f"{m[name][1] / 1024:.0f}" for name in memory_start)]
                                             for t, m in series]), "",
        "## Faults under load (same concurrency)", "",
        markdown_table(["fault", "req/s", "p99 ms", "non-2xx", "details"], fault_rows), "",
        "During the Triton outage the gateway answers 503 (JSON, Retry-After) within its 500 ms deadline; those are "
        "the non-2xx of that row. Feedback keeps being acknowledged while PostgreSQL is down (spooled, then drained).",
        "", machine_line(load_before), "",
    ])  # fmt: skip
    stem = "soak-quick" if args.quick else ("soak" if args.minutes == 5 else f"soak-{args.minutes:g}min")
    write_results(args.out, stem, markdown, {"sweep": sweep, "best_concurrency": best, "soak": soak,
                  "memory_start_kib": memory_start, "memory_end_kib": memory_end, "private_growth": growth,
                  "rss_growth": rss_growth,
                  "faults": faults, "feedback_rows": stored, "machine": machine()})  # fmt: skip
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
