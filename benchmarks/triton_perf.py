"""Serving latency and throughput of the real Triton repository, measured with perf_analyzer over gRPC.

One run does everything on one server:

1. builds a synthetic catalog (``trainer.data.synthetic``: by default 20,000 users x 50,000 items), fits our ALS
   with 64 factors for a couple of iterations (quality is irrelevant here, only the shapes matter) and saves
   the run with ``trainer.artifacts.save_run``;
2. publishes it with ``trainer.triton.publish.publish`` (the real path: TorchScript + ONNX export, parity check,
   ``model.py`` copies) into a fresh model repository rendered by ``render_repository``;
3. starts ``tritonserver`` (``recsys.stack.triton.TritonServer``, explicit model control, free ports), loads
   every model, and records the resident memory of the server and its python-backend stubs;
4. runs perf_analyzer (``benchmarks/perf_tools.py``) at each concurrency level against both ensembles
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
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks._common import (
    REPO_ROOT,
    RESULTS_DIR,
    git_revision,
    load_average,
    machine,
    markdown_table,
    now_utc,
    versions,
    write_results,
)
from benchmarks.perf_tools import (
    Measurement,
    PerfAnalyzer,
    PerfRow,
    PerfRun,
    TreeMemory,
    find_perf_analyzer,
    run_perf_analyzer,
    settled_tree_memory,
)

# Import-light names only at module level: trainer/recsys modules pull in torch, which --help does not need.
ENSEMBLE_A, ENSEMBLE_B = "recsys_a", "recsys_b"
SCORER_TS, SCORER_ONNX = "recsys_scorer_torchscript", "recsys_scorer_onnx"
LOOKUP, TOPK = "recsys_lookup", "recsys_topk"
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

Log = Callable[[str], None]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ catalog


@dataclass(frozen=True)
class Catalog:
    users: int
    items: int
    factors: int
    pairs: int
    exclude_width: int  # H: what recsys_lookup emits (the longest published history)
    factors_source: str
    fit_seconds: float | None
    publish_seconds: float
    version: int


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Sends this process's stdout and stderr (file descriptors, so C++ and exporter chatter too) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with path.open("ab") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def build_and_publish(args: argparse.Namespace, work: Path, log_file: Path) -> Catalog:
    """Synthetic plays -> ALS (or random factors) -> ``save_run`` -> ``publish`` into ``work/repository``."""
    import torch

    from trainer.artifacts import save_run
    from trainer.data.synthetic import SyntheticConfig, generate
    from trainer.models.als import ALS, ALSParams
    from trainer.triton.publish import publish
    from trainer.triton.repository import render_repository
    from trainer.weighting import CorpusStats

    config = SyntheticConfig(
        n_users=args.users,
        n_items=args.items,
        n_genres=min(20, args.items),
        mean_sessions_per_user=args.sessions,
        mean_session_length=args.session_length,
        seed=args.seed,
    )
    say(f"generating {args.users:,} users x {args.items:,} items ...")
    data = generate(config).interactions
    history = data.to_csr()
    params = ALSParams(factors=args.factors, iterations=args.als_iterations, seed=args.seed)
    model = ALS(params)
    fit_seconds: float | None = None
    if args.random_factors:
        say("random factors (no fit): the scores are meaningless, the shapes and the serving path are real")
        gen = torch.Generator().manual_seed(args.seed)
        model.user_factors = torch.randn(data.n_users, args.factors, generator=gen) * 0.1
        model.item_factors = torch.randn(data.n_items, args.factors, generator=gen) * 0.1
        model.item_bias = None
        model.n_users, model.n_items = data.n_users, data.n_items
        model.corpus = CorpusStats.of(history)
        source = "random"
    else:
        say(f"fitting ALS ({args.factors} factors, {args.als_iterations} iterations; quality is irrelevant here) ...")
        began = time.perf_counter()
        model.fit(data)
        fit_seconds = time.perf_counter() - began
        source = f"als ({args.als_iterations} iterations)"
    run_dir = work / "run"
    metrics = {"model": "als", "params": params.to_dict(), "note": "benchmarks.triton_perf: not evaluated"}
    save_run(run_dir, model, data, metrics)

    repository = work / "repository"
    render_repository(repository)
    say(f"publishing into {repository} (export + parity; exporter output goes to {log_file}) ...")
    began = time.perf_counter()
    with output_to(log_file):
        published = publish(run_dir, repository)
    publish_seconds = time.perf_counter() - began
    lengths = np.diff(history.indptr)
    return Catalog(
        users=data.n_users,
        items=data.n_items,
        factors=args.factors,
        pairs=int(history.nnz),
        exclude_width=max(int(lengths.max()) if len(lengths) else 1, 1),
        factors_source=source,
        fit_seconds=fit_seconds,
        publish_seconds=publish_seconds,
        version=published.version,
    )


@dataclass(frozen=True)
class Requests:
    """Real requests drawn from what was published: external ids for the ensembles, indices and padded
    exclusion rows (exactly what recsys_lookup emits) for the scorers."""

    user_ids: list[str]
    user_index: npt.NDArray[np.int64]
    user_vector: npt.NDArray[np.float32]  # the lookup's rows for them (USER_VECTOR), [n, D + 1]
    exclude: npt.NDArray[np.int64]  # (n, H), -1 padded
    top_k: int


def sample_requests(repository: Path, version: int, n: int, top_k: int, seed: int) -> Requests:
    folder = repository / LOOKUP / str(version)
    with np.load(folder / "ids.npz", allow_pickle=False) as npz:
        users = npz["user_ids"]
    with np.load(folder / "history.npz", allow_pickle=False) as npz:
        indptr = npz["indptr"].astype(np.int64)
        indices = npz["indices"].astype(np.int64)
    lengths = np.diff(indptr)
    width = max(int(lengths.max()) if len(lengths) else 1, 1)  # as recsys_lookup computes it
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(users), size=min(n, len(users)), replace=False)).astype(np.int64)
    exclude = np.full((len(chosen), width), -1, dtype=np.int64)
    for row, user in enumerate(chosen.tolist()):
        items = indices[indptr[user] : indptr[user + 1]]
        exclude[row, : len(items)] = items
    vectors = np.load(folder / "users.npy", allow_pickle=False)[chosen]
    return Requests(
        user_ids=[str(u) for u in users[chosen].tolist()],
        user_index=chosen,
        user_vector=vectors,
        exclude=exclude,
        top_k=top_k,
    )


def write_input_data(requests: Requests, folder: Path) -> dict[str, Path]:
    """perf_analyzer ``--input-data`` files: one for USER_ID-fed models, one for the scorers."""
    folder.mkdir(parents=True, exist_ok=True)
    by_id = {"data": [{"USER_ID": [uid], "TOP_K": [requests.top_k]} for uid in requests.user_ids]}
    width = int(requests.exclude.shape[1])
    by_index = {
        "data": [
            {
                "USER_VECTOR": {"content": vector.tolist(), "shape": [len(vector)]},
                "EXCLUDE": {"content": row.tolist(), "shape": [width]},
                "TOP_K": [requests.top_k],
            }
            for vector, row in zip(requests.user_vector, requests.exclude, strict=True)
        ]
    }
    paths = {"by_id": folder / "requests_by_user_id.json", "by_index": folder / "requests_by_user_index.json"}
    paths["by_id"].write_text(json.dumps(by_id))
    paths["by_index"].write_text(json.dumps(by_index))
    return paths


# ------------------------------------------------------------------------------------------------ floors


@dataclass(frozen=True)
class Floor:
    """One query at a time, in this process, one thread: what the scorer's maths costs without Triton."""

    runtime: str
    queries: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


def _summary(runtime: str, seconds: list[float]) -> Floor:
    ordered = sorted(seconds)
    return Floor(
        runtime=runtime,
        queries=len(ordered),
        p50_ms=statistics.median(ordered) * 1e3,
        p99_ms=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        mean_ms=statistics.fmean(ordered) * 1e3,
    )


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
        floors.append(_summary("torch.jit (TorchScript), 1 thread", seconds))
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
    floors.append(_summary("onnxruntime (ONNX), 1 intra-op thread", seconds))
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


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


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
    header = ["model", "c", "infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "avg ms", "queue ms", "infer ms"]
    rows = []
    for run in serving.runs:
        rows += [
            [
                f"`{run.model}`",
                str(row.concurrency),
                f"{row.throughput:,.0f}",
                _fmt(row.p50_ms),
                _fmt(row.p90_ms),
                _fmt(row.p95_ms),
                _fmt(row.p99_ms),
                _fmt(row.avg_ms),
                _fmt(row.server_queue_ms),
                _fmt(row.server_compute_infer_ms),
            ]
            for row in run.rows
        ]
        for level, why in run.failures.items():
            rows.append([f"`{run.model}`", str(level), "failed", why[:80], "", "", "", "", "", ""])
    lines += [markdown_table(header, rows), ""]
    lines += [
        "*queue* and *infer* are the server's averages per request (for an ensemble, summed over its steps as "
        "perf_analyzer reports them); the client latencies include gRPC and the client itself.",
        "",
        "## Goals",
        "",
        markdown_table(
            ["check", "value", "goal", "met", "detail"],
            [[c.name, _fmt(c.value), c.goal, _met(c), c.detail] for c in checks],
        ),
        "",
        "## Where an ensemble request spends its time",
        "",
        "Server-side averages per request of each step (perf_analyzer's composing-model report), in ms; "
        "*batch* = inferences / executions, the mean dynamic batch the step ran.",
        "",
    ]
    step_rows = []
    for ensemble in SCORER_OF:
        ensemble_run = _run(serving, ensemble)
        for ensemble_row in ensemble_run.rows if ensemble_run else ():
            for stats in ensemble_row.server[1:]:
                parts = stats.parts_ms
                step_rows.append(
                    [
                        f"`{ensemble}`",
                        str(ensemble_row.concurrency),
                        f"`{stats.model}`",
                        _fmt(stats.avg_request_ms),
                        _fmt(parts.get("queue")),
                        _fmt(parts.get("compute_input")),
                        _fmt(parts.get("compute_infer")),
                        _fmt(parts.get("compute_output")),
                        _fmt(stats.mean_batch),
                    ]
                )
    if step_rows:
        lines += [
            markdown_table(
                ["ensemble", "c", "step", "request", "queue", "input", "infer", "output", "batch"], step_rows
            ),
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
                    _fmt(floor["p50_ms"], 3),
                    _fmt(floor["p99_ms"], 3),
                    _fmt(None if served is None else served.p50_ms),
                    _fmt(None if served is None or floor["p50_ms"] <= 0 else served.p50_ms / floor["p50_ms"], 1),
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
                        _fmt(bandwidth["numpy_copy_gbs"], 1),
                        _fmt(item_mb / 1e3 / bandwidth["numpy_copy_gbs"] * 1e3, 2),
                    ],
                    [
                        f"torch copy, {bandwidth['torch_threads']} threads ((read + write) / s)",
                        _fmt(bandwidth["torch_copy_gbs"], 1),
                        _fmt(item_mb / 1e3 / bandwidth["torch_copy_gbs"] * 1e3, 2),
                    ],
                    [
                        f"torch sum, {bandwidth['torch_threads']} threads (read / s)",
                        _fmt(bandwidth["torch_sum_gbs"], 1),
                        _fmt(item_mb / 1e3 / bandwidth["torch_sum_gbs"] * 1e3, 2),
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
                    _fmt(memory.rss_mib, 0),
                    _fmt(memory.pss_mib, 0),
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


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return values


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
    perf.add_argument("--concurrency", type=_int_list, default=[1, 4, 16], help="levels (default 1,4,16)")
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
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = Path(tempfile.mkdtemp(prefix="triton_perf-"))
            say(f"work folder (kept): {work}")
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="triton_perf-")))
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
        "benchmark": "triton_perf",
        "mode": args.stem,
        "started_at": started_at,
        "finished_at": now_utc(),
        "git": git_revision(),
        "machine": machine(),
        "load_average": {"start": load_start, "end": load_average()},
        "versions": versions(("torch", "numpy", "onnxruntime", "nvidia-pytriton", "tritonclient")),
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
