"""Serving latency and throughput of the real Triton repository, measured with perf_analyzer over gRPC.

One run does everything on one server:

1. builds a synthetic catalog (``trainer.data.synthetic``: by default 20,000 users x 50,000 items), fits our ALS
   with 64 factors for a couple of iterations (quality is irrelevant here, only the shapes matter) and saves
   the run with ``trainer.artifacts.save_run``;
2. publishes it with ``trainer.triton.publish.publish`` (the real path: TorchScript + ONNX export, parity check,
   ``model.py`` copies) into a fresh model repository rendered by ``render_repository``;
3. starts ``tritonserver`` (``recsys.stack.triton.TritonServer``, explicit model control, free ports), loads
   every model, and records the resident memory of the server and its python-backend stubs;
4. runs perf_analyzer (``benchmarks/harness/perf_analyzer.py``) at each concurrency level against both ensembles
   (``recsys_a`` TorchScript, ``recsys_b`` ONNX) and each scorer step alone, with real user ids / real
   exclusion lists as input data, so requests vary;
5. times the same scorers in this process without Triton (one thread, one query: the maths floor) and, with
   ``--catalog-1m`` or ``--bandwidth``, the machine's memory bandwidth, which bounds one pass over the items;
6. writes ``benchmarks/results/<stem>.md`` and ``.json`` and prints the Markdown.

    .venv/bin/python -m benchmarks.triton_perf                  # 50k items, c = 1,4,16: triton_perf.{md,json}
    .venv/bin/python -m benchmarks.triton_perf --quick          # smoke test, ~2 min: triton_perf-quick.*
    .venv/bin/python -m benchmarks.triton_perf --catalog-1m     # 1M items + bandwidth bound: triton_perf-1m.*
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.catalog import LOOKUP, Requests, build_and_publish, sample_requests, write_input_data
from benchmarks.harness.facts import REPO_ROOT, RESULTS_DIR, load_average, now_utc, run_header
from benchmarks.harness.perf_analyzer import (
    PERCENTILE_HEADER,
    Measurement,
    PerfAnalyzer,
    PerfRow,
    PerfRun,
    find_perf_analyzer,
    percentile_rows,
    run_perf_analyzer,
    step_rows,
)
from benchmarks.harness.running import Floor, int_list, say, summarize, work_folder
from benchmarks.harness.tables import fmt, markdown_table, write_results
from recsys.stack.memory import TreeMemory, settled_tree_memory

# Import-light names only at module level: trainer/recsys modules pull in torch, which --help does not need.
ENSEMBLE_A, ENSEMBLE_B = "recsys_a", "recsys_b"
SCORER_TS, SCORER_ONNX = "recsys_scorer_torchscript", "recsys_scorer_onnx"
TOPK = "recsys_topk"
FUSED = "recsys_fused"  # lookup + ONNX scorer + top-k in one python model: the ensembles' comparison
LOAD_ORDER = (LOOKUP, SCORER_TS, SCORER_ONNX, TOPK, ENSEMBLE_A, ENSEMBLE_B)
DEFAULT_MODELS = (ENSEMBLE_A, ENSEMBLE_B, SCORER_TS, SCORER_ONNX, FUSED)
MEASURABLE = (*DEFAULT_MODELS, LOOKUP)
SCORER_OF = {ENSEMBLE_A: SCORER_TS, ENSEMBLE_B: SCORER_ONNX}

FULL = {"users": 20_000, "items": 50_000, "sessions": 5.0, "session_length": 10.0}
QUICK = {"users": 2_000, "items": 5_000, "sessions": 5.0, "session_length": 10.0}
ONE_M = {"users": 20_000, "items": 1_000_000, "sessions": 2.0, "session_length": 5.0}

# The goals.
GOAL_ENSEMBLE_OVER_SCORER = 1.5  # ensemble p50 / scorer-alone p50, both at concurrency 1
GOAL_SCALING = 3.0  # throughput at the highest / the lowest concurrency
GOAL_P50_C1_MS = 2.5
GOAL_THROUGHPUT_C4 = 1000.0
GOAL_RSS_MIB = 1024.0  # 1 GiB

# ------------------------------------------------------------------------------------------------ floors


#: the packages whose versions the results record
PACKAGES = ("torch", "numpy", "onnxruntime", "nvidia-pytriton", "tritonclient")


def in_process_floors(repository: Path, version: int, requests: Requests, queries: int) -> list[Floor]:
    """The published TorchScript (torch.jit, 1 thread) and ONNX (onnxruntime, 1 intra-op thread) scorers,
    set up as their model.py sets them up, on single real queries."""
    import onnxruntime as ort
    import torch

    from trainer.exporting import load_torchscript

    n = min(queries, len(requests.user_ids))
    inputs = [
        (
            requests.user_vector[i : i + 1],
            requests.exclude[i : i + 1],
            np.full((1, 1), requests.top_k, dtype=np.int64),
        )
        for i in range(n)
    ]
    floors = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = load_torchscript(repository / SCORER_TS / str(version) / "model.pt")
        seconds = []
        with torch.inference_mode():
            for user, exclude, k in inputs[:10]:  # warm-up
                module(torch.from_numpy(user), torch.from_numpy(exclude), torch.from_numpy(k))
            for user, exclude, k in inputs:
                began = time.perf_counter()
                module(torch.from_numpy(user), torch.from_numpy(exclude), torch.from_numpy(k))
                seconds.append(time.perf_counter() - began)
        floors.append(summarize("torch.jit (TorchScript), 1 thread", seconds))
        del module
    finally:
        torch.set_num_threads(threads)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(repository / SCORER_ONNX / str(version) / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    names = ("USER_VECTOR", "EXCLUDE", "TOP_K")
    seconds = []
    for batch in inputs[:10]:
        session.run(["SCORES", "ITEMS"], dict(zip(names, batch, strict=True)))
    for batch in inputs:
        feed = dict(zip(names, batch, strict=True))
        began = time.perf_counter()
        session.run(["SCORES", "ITEMS"], feed)
        seconds.append(time.perf_counter() - began)
    floors.append(summarize("onnxruntime (ONNX), 1 intra-op thread", seconds))
    return floors


@dataclass(frozen=True)
class Bandwidth:
    array_mib: int
    numpy_copy_gbs: float  # (read + write) bytes / s, one thread
    torch_copy_gbs: float  # (read + write) bytes / s, torch's threads
    torch_sum_gbs: float  # read bytes / s, torch's threads
    torch_threads: int


def memory_bandwidth(array_mib: int = 512, repeats: int = 5) -> Bandwidth:
    """Best of ``repeats`` over an array far larger than the caches (GB/s = 1e9 bytes per second)."""
    import torch

    n = array_mib * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    nbytes = float(src.nbytes)

    def best(step: Callable[[], object]) -> float:
        step()
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            step()
            times.append(time.perf_counter() - began)
        return min(times)

    numpy_copy = best(lambda: np.copyto(dst, src))
    t_src, t_dst = torch.from_numpy(src), torch.from_numpy(dst)
    torch_copy = best(lambda: t_dst.copy_(t_src))
    torch_sum = best(lambda: t_src.sum())
    return Bandwidth(
        array_mib=array_mib,
        numpy_copy_gbs=2 * nbytes / numpy_copy / 1e9,
        torch_copy_gbs=2 * nbytes / torch_copy / 1e9,
        torch_sum_gbs=nbytes / torch_sum / 1e9,
        torch_threads=torch.get_num_threads(),
    )


# ------------------------------------------------------------------------------------------------ serving


@dataclass(frozen=True)
class Serving:
    runs: list[PerfRun]
    memory_loaded: TreeMemory
    memory_after: TreeMemory
    ready_seconds: float | None
    load_seconds: dict[str, float]
    server_log: str | None
    perf_analyzer_version: str


def serve_and_measure(
    args: argparse.Namespace,
    repository: Path,
    inputs: dict[str, Path],
    analyzer: PerfAnalyzer,
    measurement: Measurement,
    work: Path,
) -> Serving:
    from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer

    config = TritonConfig(
        model_repository=repository,
        ports=TritonPorts.auto(),
        workdir=REPO_ROOT / ".cache" / "triton",
        model_timeout_s=600.0,
    )
    runs: list[PerfRun] = []
    load_seconds: dict[str, float] = {}
    say("starting tritonserver ...")
    with TritonServer(config) as server:
        assert server.pid is not None
        for name in LOAD_ORDER:
            began = time.perf_counter()
            server.load_model(name)
            load_seconds[name] = round(time.perf_counter() - began, 2)
        memory_loaded = settled_tree_memory(server.pid)  # both variants: the figure the RSS goal is about
        if FUSED in args.models:
            began = time.perf_counter()
            server.load_model(FUSED)
            load_seconds[FUSED] = round(time.perf_counter() - began, 2)
        say(
            f"server ready in {server.ready_after_s or 0:.1f} s, models loaded in {sum(load_seconds.values()):.1f} s; "
            f"RSS {memory_loaded.rss_mib:,.0f} MiB (PSS {memory_loaded.pss_mib or 0:,.0f}) over "
            f"{len(memory_loaded.pids)} processes"
        )
        for model in args.models:
            say(f"perf_analyzer: {model} at concurrency {','.join(map(str, args.concurrency))} ...")
            data = inputs["by_index"] if model in (SCORER_TS, SCORER_ONNX) else inputs["by_id"]
            runs.append(
                run_perf_analyzer(
                    analyzer,
                    model,
                    server.urls.grpc,
                    concurrency=args.concurrency,
                    work_dir=work / "perf_analyzer",
                    input_data=data,
                    measurement=measurement,
                    timeout_s=args.pa_timeout,
                    log=say,
                )
            )
        memory_after = settled_tree_memory(server.pid)
        log_path = str(server.log_path) if server.log_path else None
        ready = server.ready_after_s
    return Serving(
        runs=runs,
        memory_loaded=memory_loaded,
        memory_after=memory_after,
        ready_seconds=ready,
        load_seconds=load_seconds,
        server_log=log_path,
        perf_analyzer_version=analyzer.version(),
    )


# ------------------------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    goal: str
    met: bool | None
    detail: str = ""


def _run(serving: Serving, model: str) -> PerfRun | None:
    return next((r for r in serving.runs if r.model == model), None)


def _row(serving: Serving, model: str, concurrency: int) -> PerfRow | None:
    run = _run(serving, model)
    return None if run is None else run.row(concurrency)


def goal_checks(serving: Serving, concurrency: Sequence[int]) -> list[Check]:
    lo, hi = min(concurrency), max(concurrency)
    checks: list[Check] = []
    for ensemble, scorer in SCORER_OF.items():
        e1, s1 = _row(serving, ensemble, 1), _row(serving, scorer, 1)
        ratio = e1.p50_ms / s1.p50_ms if e1 and s1 and s1.p50_ms > 0 else None
        checks.append(
            Check(
                f"{ensemble} p50 / {scorer} p50, c=1",
                ratio,
                f"<= {GOAL_ENSEMBLE_OVER_SCORER}",
                None if ratio is None else ratio <= GOAL_ENSEMBLE_OVER_SCORER,
                f"{e1.p50_ms:.2f} / {s1.p50_ms:.2f} ms" if e1 and s1 else "needs both at c=1",
            )
        )
    for model in (ENSEMBLE_A, ENSEMBLE_B, SCORER_TS, SCORER_ONNX, FUSED):
        low, high = _row(serving, model, lo), _row(serving, model, hi)
        if low is None or high is None or lo == hi:
            continue
        ratio = high.throughput / low.throughput if low.throughput > 0 else None
        checks.append(
            Check(
                f"{model} throughput c={hi} / c={lo}",
                ratio,
                f">= {GOAL_SCALING:g}",
                None if ratio is None else ratio >= GOAL_SCALING,
                f"{high.throughput:,.0f} / {low.throughput:,.0f} infer/s",
            )
        )
    for ensemble in SCORER_OF:
        row = _row(serving, ensemble, 1)
        checks.append(
            Check(
                f"{ensemble} p50 at c=1 (ms)",
                None if row is None else row.p50_ms,
                f"<= {GOAL_P50_C1_MS}",
                None if row is None else row.p50_ms <= GOAL_P50_C1_MS,
            )
        )
        row = _row(serving, ensemble, 4)
        checks.append(
            Check(
                f"{ensemble} throughput at c=4 (infer/s)",
                None if row is None else row.throughput,
                f">= {GOAL_THROUGHPUT_C4:g}",
                None if row is None else row.throughput >= GOAL_THROUGHPUT_C4,
            )
        )
    for label, memory in (("after loading", serving.memory_loaded), ("after the runs", serving.memory_after)):
        checks.append(
            Check(
                f"Triton RSS {label} (MiB)",
                memory.rss_mib,
                f"<= {GOAL_RSS_MIB:g} (1 GiB)",
                memory.rss_mib <= GOAL_RSS_MIB,
                f"server + {len(memory.pids) - 1} stub(s); PSS {memory.pss_mib or 0:,.0f} MiB",
            )
        )
    return checks


def _met(check: Check) -> str:
    return "n/a" if check.met is None else ("yes" if check.met else "**no**")


def render_markdown(payload: dict[str, Any], serving: Serving, checks: list[Check]) -> str:
    cat = payload["catalog"]
    settings = payload["settings"]
    lines = [
        f"# Triton serving benchmark: {payload['mode']}",
        "",
        f"{payload['finished_at']}, git {payload['git']}, {payload['machine']['cpu']} "
        f"({payload['machine']['usable_cores']} usable cores, {payload['machine']['memory_gib']} GiB). "
        f"Load average {payload['load_average']['start']} at start, {payload['load_average']['end']} at end: "
        "perf_analyzer, tritonserver and its stubs share these cores, and any other work on the machine skews "
        "every figure.",
        "",
        f"Catalog: {cat['users']:,} users x {cat['items']:,} items, {cat['factors']} factors, "
        f"{cat['pairs']:,} published pairs, exclusion width H = {cat['exclude_width']} (longest history), "
        f"factors from {cat['factors_source']}, published as version {cat['version']} by "
        "`trainer.triton.publish.publish` "
        f"in {cat['publish_seconds']:.0f} s. Requests: {settings['request_users']:,} real users cycled, "
        f"TOP_K = {settings['top_k']}, gRPC, batch 1, synchronous clients. perf_analyzer "
        f"{serving.perf_analyzer_version}: {settings['measurement']}.",
        "",
        "## Latency and throughput",
        "",
    ]
    header = ["model", "c", *PERCENTILE_HEADER, "queue ms", "infer ms"]
    lines += [markdown_table(header, percentile_rows(serving.runs)), ""]
    lines += [
        "*queue* and *infer* are the server's averages per request (for an ensemble, summed over its steps as "
        "perf_analyzer reports them); the client latencies include gRPC and the client itself.",
        "",
        "## Goals",
        "",
        markdown_table(
            ["check", "value", "goal", "met", "detail"],
            [[c.name, fmt(c.value), c.goal, _met(c), c.detail] for c in checks],
        ),
        "",
        "## Where an ensemble request spends its time",
        "",
        "Server-side averages per request of each step (perf_analyzer's composing-model report), in ms; "
        "*batch* = inferences / executions, the mean dynamic batch the step ran.",
        "",
    ]
    steps = step_rows([run for run in serving.runs if run.model in SCORER_OF])
    if steps:
        lines += [
            markdown_table(["ensemble", "c", "step", "request", "queue", "input", "infer", "output", "batch"], steps),
            "",
        ]
    else:
        lines += ["(no composing-model report was parsed)", ""]
    floors = payload.get("in_process_floor") or []
    if floors:
        lines += [
            "## The scorer without Triton",
            "",
            "The published scorer files run in the benchmark process, one query at a time, set up as their "
            "`model.py` sets them up (one thread); *Triton c=1 p50* is the same scorer behind gRPC and the python "
            "backend.",
            "",
        ]
        floor_rows = []
        for floor, scorer in zip(floors, (SCORER_TS, SCORER_ONNX), strict=False):
            served = _row(serving, scorer, 1)
            floor_rows.append(
                [
                    floor["runtime"],
                    fmt(floor["p50_ms"], 3),
                    fmt(floor["p99_ms"], 3),
                    fmt(None if served is None else served.p50_ms),
                    fmt(None if served is None or floor["p50_ms"] <= 0 else served.p50_ms / floor["p50_ms"], 1),
                ]
            )
        lines += [
            markdown_table(["runtime", "p50 ms", "p99 ms", "Triton c=1 p50 ms", "Triton / floor"], floor_rows),
            "",
        ]
    bandwidth = payload.get("bandwidth")
    if bandwidth:
        item_mb = payload["item_bytes"] / 1e6
        lines += [
            "## Memory-bandwidth bound",
            "",
            f"Item factors: {cat['items']:,} x {cat['factors']} x 4 B = {item_mb:,.0f} MB, read once per scoring "
            f"pass (a dynamic batch shares one pass). Measured on a {bandwidth['array_mib']} MiB array:",
            "",
            markdown_table(
                ["measurement", "GB/s", "one pass over the items (ms)"],
                [
                    [
                        "numpy copy, 1 thread ((read + write) / s)",
                        fmt(bandwidth["numpy_copy_gbs"], 1),
                        fmt(item_mb / 1e3 / bandwidth["numpy_copy_gbs"] * 1e3, 2),
                    ],
                    [
                        f"torch copy, {bandwidth['torch_threads']} threads ((read + write) / s)",
                        fmt(bandwidth["torch_copy_gbs"], 1),
                        fmt(item_mb / 1e3 / bandwidth["torch_copy_gbs"] * 1e3, 2),
                    ],
                    [
                        f"torch sum, {bandwidth['torch_threads']} threads (read / s)",
                        fmt(bandwidth["torch_sum_gbs"], 1),
                        fmt(item_mb / 1e3 / bandwidth["torch_sum_gbs"] * 1e3, 2),
                    ],
                ],
            ),
            "",
            "The scorers run one thread per instance, so the one-thread line bounds their per-pass latency; "
            "throughput beyond 1 / pass needs batching (several queries per pass) or more instances.",
            "",
        ]
    lines += [
        "## Memory",
        "",
        markdown_table(
            ["when", "RSS MiB (sum)", "PSS MiB", "processes"],
            [
                [
                    label,
                    fmt(memory.rss_mib, 0),
                    fmt(memory.pss_mib, 0),
                    ", ".join(f"{k}: {v:,.0f}" for k, v in memory.per_process.items()),
                ]
                for label, memory in (
                    ("all models loaded", serving.memory_loaded),
                    ("after the runs", serving.memory_after),
                )
            ],
        ),
        "",
        "RSS sums count shared pages (the python backend's shared-memory region, libraries) once per process; PSS "
        "splits them.",
        "",
    ]
    if payload.get("notes"):
        lines += ["## Notes", "", *[f"* {note}" for note in payload["notes"]], ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def _models(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(MEASURABLE))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"models must be among {', '.join(MEASURABLE)}; got {text!r}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.triton_perf",
        description=(
            "Serve a freshly published synthetic catalog with the real tritonserver and measure both ensembles "
            "and both scorers alone with perf_analyzer over gRPC. Writes benchmarks/results/<stem>.{md,json}."
        ),
    )
    size = parser.add_argument_group("catalog")
    size.add_argument("--users", type=int, help=f"users (default {FULL['users']:,}; --quick {QUICK['users']:,})")
    size.add_argument("--items", type=int, help=f"items (default {FULL['items']:,}; --quick {QUICK['items']:,})")
    size.add_argument("--sessions", type=float, help="mean sessions per user (default 5; 1M catalog: 2)")
    size.add_argument("--session-length", type=float, help="mean plays per session (default 10; 1M catalog: 5)")
    size.add_argument("--factors", type=int, default=64, help="ALS factors, D (default 64)")
    size.add_argument("--als-iterations", type=int, default=2, help="ALS iterations (default 2: shapes matter here)")
    size.add_argument("--random-factors", action="store_true", help="skip the fit: random factors, same publish path")
    size.add_argument(
        "--catalog-1m",
        action="store_true",
        help="1,000,000 items x 20,000 users (2 x 5 plays each), plus the memory-bandwidth bound; stem triton_perf-1m",
    )
    size.add_argument("--seed", type=int, default=0)
    perf = parser.add_argument_group("measurement")
    perf.add_argument("--concurrency", type=int_list, default=[1, 4, 16], help="levels (default 1,4,16)")
    perf.add_argument(
        "--models",
        type=_models,
        default=list(DEFAULT_MODELS),
        help=f"models to measure (default {','.join(DEFAULT_MODELS)}; also {LOOKUP})",
    )
    perf.add_argument("--top-k", type=int, default=10)
    perf.add_argument("--request-users", type=int, default=1000, help="distinct real users in the input data")
    perf.add_argument(
        "--request-count",
        type=int,
        help="perf_analyzer requests per count window (default 1000; --quick 150; --catalog-1m 300)",
    )
    perf.add_argument("--stability", type=float, help="--stability-percentage (default 25; --quick 50)")
    perf.add_argument("--max-trials", type=int, help="windows before giving up on stability (default 10; --quick 4)")
    perf.add_argument("--pa-timeout", type=float, default=900.0, help="seconds per perf_analyzer process")
    perf.add_argument("--floor-queries", type=int, default=300, help="queries for the in-process scorer floor")
    perf.add_argument("--bandwidth", action="store_true", help="measure memory bandwidth (on with --catalog-1m)")
    parser.add_argument("--quick", action="store_true", help="tiny catalog and short windows (~2 min): <stem>-quick")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default benchmarks/results)")
    parser.add_argument("--stem", help="file name stem of the results (default: from the mode, e.g. triton_perf-quick)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (repository, perf_analyzer files)")
    args = parser.parse_args(argv)

    base = ONE_M if args.catalog_1m else (QUICK if args.quick else FULL)
    custom = args.users is not None or args.items is not None
    args.users = args.users if args.users is not None else base["users"]
    args.items = args.items if args.items is not None else base["items"]
    args.sessions = args.sessions if args.sessions is not None else base["sessions"]
    args.session_length = args.session_length if args.session_length is not None else base["session_length"]
    if args.request_count is None:
        args.request_count = 150 if args.quick else (300 if args.catalog_1m else 1000)
    if args.stability is None:
        args.stability = 50.0 if args.quick else 25.0
    if args.max_trials is None:
        args.max_trials = 4 if args.quick else 10
    args.bandwidth = args.bandwidth or args.catalog_1m
    stem = "triton_perf-1m" if args.catalog_1m else "triton_perf"
    if custom:
        stem = f"triton_perf-{args.users}x{args.items}"
    args.stem = args.stem or stem + ("-quick" if args.quick else "")
    if args.users < 1 or args.items < 20:
        parser.error("need at least 1 user and 20 items")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started_at, load_start = now_utc(), load_average()
    analyzer = find_perf_analyzer()
    measurement = Measurement(
        request_count=args.request_count, stability_percentage=args.stability, max_trials=args.max_trials
    )
    notes = []
    with work_folder("triton_perf-", keep=args.keep) as work:
        log_file = work / "publish.log"
        catalog = build_and_publish(args, work, log_file)
        repository = work / "repository"
        requests = sample_requests(repository, catalog.version, args.request_users, args.top_k, args.seed)
        inputs = write_input_data(requests, work / "inputs")
        say("timing the scorers in-process (no Triton) ...")
        floors = in_process_floors(repository, catalog.version, requests, args.floor_queries)
        bandwidth = None
        if args.bandwidth:
            say("measuring memory bandwidth ...")
            bandwidth = memory_bandwidth()
        serving = serve_and_measure(args, repository, inputs, analyzer, measurement, work)
    if catalog.factors_source == "random":
        notes.append("Factors are random (no fit): scores are meaningless, shapes, files and serving path are real.")
    if args.quick:
        notes.append("Quick run: tiny catalog and short, loosely stable windows; a smoke test, not a measurement.")
    notes.append(
        "perf_analyzer itself runs on the same cores as the server; at high concurrency it takes a share of them."
    )
    checks = goal_checks(serving, args.concurrency)
    payload: dict[str, Any] = {
        **run_header("triton_perf", args.stem, started_at, load_start, PACKAGES),
        "catalog": asdict(catalog),
        "item_bytes": catalog.items * catalog.factors * 4,
        "settings": {
            "concurrency": args.concurrency,
            "models": args.models,
            "top_k": args.top_k,
            "request_users": len(requests.user_ids),
            "protocol": "grpc",
            "measurement": " ".join(measurement.args()),
            "perf_analyzer": str(analyzer.binary),
            "perf_analyzer_version": serving.perf_analyzer_version,
        },
        "server": {
            "ready_seconds": serving.ready_seconds,
            "load_seconds": serving.load_seconds,
            "log": serving.server_log,
        },
        "memory": {"loaded": asdict(serving.memory_loaded), "after_runs": asdict(serving.memory_after)},
        "runs": [run.to_json() for run in serving.runs],
        "checks": [asdict(c) for c in checks],
        "in_process_floor": [asdict(f) for f in floors],
        "bandwidth": None if bandwidth is None else asdict(bandwidth),
        "notes": notes,
    }
    markdown = render_markdown(payload, serving, checks)
    md_path, json_path = write_results(args.out, args.stem, markdown, payload)
    print(markdown)
    say(f"wrote {md_path} and {json_path}")
    failed = sum(len(run.failures) for run in serving.runs)
    if failed:
        say(f"{failed} perf_analyzer level(s) failed: see the table")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
