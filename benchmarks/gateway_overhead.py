"""What the gateway and NGINX add on top of Triton: the same recommendation requests (real user ids, top 10)
sent straight to Triton over gRPC (perf_analyzer, ensemble recsys_b), as REST to the gateway, and as REST through
NGINX to the gateway (wrk), at concurrency 1 and 16, in one run on one stack.

The catalog is the serving benchmark's (benchmarks.triton_perf): 20,000 users x 50,000 items, 64 factors. The
experiment sends every listener to recsys_b, so all three paths do the same Triton work.

    .venv/bin/python -m benchmarks.gateway_overhead           # results/gateway_overhead.{md,json}
    .venv/bin/python -m benchmarks.gateway_overhead --quick   # small catalog, short windows
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.catalog import build_and_publish, catalog_args, sample_requests, write_input_data
from benchmarks.harness.facts import RESULTS_DIR, load_average, machine, machine_line, now_utc
from benchmarks.harness.perf_analyzer import Measurement, find_perf_analyzer, run_perf_analyzer
from benchmarks.harness.tables import markdown_table, write_results
from benchmarks.harness.wrk import run_wrk
from recsys.stack.local import LocalStack, StackConfig, StackPorts

LEVELS = (1, 16)
WARMUP_S = 2


@dataclass(frozen=True)
class Figures:
    path: str
    concurrency: int
    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk_script(user_ids: list[str], folder: Path) -> Path:
    """A wrk Lua script cycling through real user ids, each request a JSON POST with the id as X-User-Id."""
    ids = ", ".join(f'"{u}"' for u in user_ids)
    script = folder / "recommend.lua"
    script.write_text(
        f"local ids = {{{ids}}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  local id = ids[(n % #ids) + 1]\n"
        '  local body = \'{"user_id":"\' .. id .. \'","top_k":10}\'\n'
        '  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json", ["X-User-Id"] = id}, body)\n'
        "end\n"
    )
    return script


def measure_wrk(url: str, script: Path, concurrency: int, seconds: int, path: str) -> Figures:
    result = run_wrk(url, script, concurrency, seconds, warmup_s=WARMUP_S)
    return Figures(path, concurrency, result.rps, result.p50_ms, result.p99_ms, result.errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 x 5,000 catalog and 5 s windows")
    parser.add_argument("--seconds", type=int, default=15, help="wrk window per level (default 15)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    catalog = catalog_args(2_000 if args.quick else 20_000, 5_000 if args.quick else 50_000)
    seconds = 5 if args.quick else args.seconds
    analyzer = find_perf_analyzer()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        work = Path(tmp)
        built = build_and_publish(catalog, work, work / "publish.log")
        repository = work / "repository"
        requests = sample_requests(repository, built.version, 1000, 10, seed=1)
        inputs = write_input_data(requests, work / "inputs")
        experiment = work / "experiment.yaml"
        experiment.write_text("name: overhead\ngroups:\n  - {name: A, model: recsys_b, share: 100}\n")
        ports = StackPorts.free()
        config = StackConfig(model_repository=repository, workdir=work / "stack", ports=ports,
                             experiment_file=experiment, postgres_dir=None)  # fmt: skip
        script = wrk_script(requests.user_ids, work)
        results: list[Figures] = []
        with LocalStack(config) as stack:
            measurement = Measurement(request_count=300 if args.quick else 1000)
            direct = run_perf_analyzer(
                analyzer, "recsys_b", f"127.0.0.1:{ports.triton_grpc}", concurrency=LEVELS,
                work_dir=work / "perf", input_data=inputs["by_id"], measurement=measurement,
            )  # fmt: skip
            results += [
                Figures("Triton gRPC direct (perf_analyzer)", r.concurrency, r.throughput, r.p50_ms, r.p99_ms, 0)
                for r in direct.rows
            ]
            for level in LEVELS:
                results.append(
                    measure_wrk(stack.gateway_url, script, level, seconds, "REST -> gateway -> Triton (wrk)")
                )
                results.append(measure_wrk(stack.nginx_url, script, level, seconds, "REST -> NGINX -> gateway (wrk)"))
            time.sleep(0.5)
    rows = [[f.path, str(f.concurrency), f"{f.throughput:,.0f}", f"{f.p50_ms:.2f}", f"{f.p99_ms:.2f}", str(f.errors)]
            for f in sorted(results, key=lambda f: (f.concurrency, f.path))]  # fmt: skip
    direct_ = {f.concurrency: f for f in results if f.path.startswith("Triton")}
    gateway = {f.concurrency: f for f in results if "-> gateway -> Triton" in f.path}
    nginx = {f.concurrency: f for f in results if "NGINX" in f.path}
    added_p50 = gateway[1].p50_ms - direct_[1].p50_ms
    kept = gateway[16].throughput / direct_[16].throughput
    nginx_added = nginx[1].p50_ms - gateway[1].p50_ms
    markdown = "\n".join([
        f"# Gateway and NGINX overhead ({now_utc()})", "",
        f"Catalog {catalog.users:,} users x {catalog.items:,} items, 64 factors, top 10, every request to recsys_b; "
        f"{seconds} s wrk windows, perf_analyzer count windows; load generators share the 2 cores with the servers. "
        "The gateway coalesces requests that arrive while its Triton calls are in flight (gateway/coalesce.py).",
        "", markdown_table(["path", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"], rows), "",
        f"- gateway adds **{added_p50:.2f} ms** at p50, concurrency 1 (goal <= 1.5 ms: "
        f"**{'met' if added_p50 <= 1.5 else 'NOT met'}**); NGINX adds {nginx_added:.2f} ms more.",
        f"- gateway keeps **{kept:.0%}** of Triton's direct throughput at concurrency 16 (goal >= 70%: "
        f"**{'met' if kept >= 0.7 else 'NOT met'}**).",
        f"- {machine_line(load_before)}", "",
    ])  # fmt: skip
    payload: dict[str, Any] = {
        "results": [asdict(f) for f in results],
        "gateway_added_p50_ms_c1": added_p50,
        "gateway_throughput_kept_c16": kept,
        "nginx_added_p50_ms_c1": nginx_added,
        "catalog": vars(catalog),
        "machine": machine(),
        "load_average": load_before,
        "user_sample": int(np.unique(requests.user_ids).size),
    }
    write_results(args.out, "gateway_overhead" + ("-quick" if args.quick else ""), markdown, payload)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
