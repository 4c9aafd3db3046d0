"""Exact and approximate retrieval side by side at 50k, 1M and 10M items, through the real Triton ensembles.

For each catalogue size, in one run:

1. a child process (its own peak RSS) builds the size's synthetic world (:func:`world`: items / 10 listeners of
   ~100 plays, so 10M items means 1M listeners and 100M plays), fits our ALS (3 iterations: the factors need a
   catalogue's structure, not quality), saves the run and publishes it with ``trainer.triton.publish.publish``:
   the exact exports with their parity check, and an HNSW index for ``recsys_scorer_ann`` (``trainer.ann``: the
   recall gate runs as in production);
2. ``tritonserver`` loads the lookup, the exact ONNX scorer and its top-k step, the approximate scorer (which
   ends its ensemble itself) and both ensembles (``recsys_b`` exact, ``recsys_ann`` approximate); each load is
   timed and the tree's RSS read;
3. recall@10 of ``recsys_ann`` against ``recsys_b`` on real users through gRPC (besides the gate's own figure);
4. perf_analyzer over gRPC: p50/p99 at concurrency 1 and throughput at 16, for both ensembles;
5. the bandwidth floor of the exact scan: the items' bytes over one thread's measured copy bandwidth.

    .venv/bin/python -m benchmarks.catalog_scale                    # 50k, 1M, 10M: results/catalog_scale.{md,json}
    .venv/bin/python -m benchmarks.catalog_scale --sizes 20000 --quick   # smoke test: catalog_scale-quick.*

The 10M size needs ~15 GB at its peak (the ALS fit on 100M plays) and ~25 GB of disk: check ``free -g`` first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.catalog import sample_requests, write_input_data
from benchmarks.harness.facts import (
    REPO_ROOT,
    RESULTS_DIR,
    git_revision,
    load_average,
    machine,
    now_utc,
    peak_rss_mib,
    run_header,
)
from benchmarks.harness.perf_analyzer import Measurement, find_perf_analyzer, run_perf_analyzer
from benchmarks.harness.running import int_list, say, work_folder
from benchmarks.harness.tables import fmt, markdown_table, write_results

EXACT, APPROXIMATE = "recsys_b", "recsys_ann"
LOAD_ORDER = ("recsys_lookup", "recsys_topk", "recsys_scorer_onnx", "recsys_scorer_ann", EXACT, APPROXIMATE)
EXACT_ONLY = ("recsys_topk", "recsys_scorer_onnx", EXACT)  # what a size published without the exact path lacks
DEFAULT_SIZES = (50_000, 1_000_000, 10_000_000)
ALS_ITERATIONS = 3  # enough for factors with a catalogue's structure (the index's recall depends on it), not quality

# The goals on this 2-core machine.
GOAL_P50_MS = {10_000_000: 5.0, 1_000_000: 3.0}
GOAL_RECALL = 0.95
GOAL_RSS_10M_MIB = 8 * 1024


#: the packages whose versions the results record
PACKAGES = ("faiss-cpu", "numpy", "onnxruntime", "nvidia-pytriton", "torch")


def world(items: int, users: int | None = None) -> dict[str, int]:
    """One recipe at every size: ten listeners' worth of plays per item and 100 plays per listener (10 sessions of
    10), genres of ~10,000 items: 50k items -> 5,000 listeners x 500k plays; 10M -> 1M listeners x 100M plays,
    the audience the issue asks the whole chain to carry."""
    return {"users": users or max(items // 10, 1), "genres": max(20, items // 10_000), "sessions": 10, "length": 10}


# ------------------------------------------------------------------------------------------------ child: build


def build(items: int, users: int | None, work: Path, seed: int, sample_users: int, exact_max: int) -> dict[str, Any]:
    """World -> ALS -> save_run -> publish (exact exports + HNSW index, recall-gated); runs in a child process.
    Above ``exact_max`` items only the approximate path is published (:func:`publish_approximate`)."""
    import torch

    from benchmarks.harness.running import output_to
    from trainer.ann import AnnPolicy
    from trainer.artifacts import save_run
    from trainer.data.synthetic import SyntheticConfig, generate_counts
    from trainer.models.als import ALS, ALSParams
    from trainer.triton.family import FACTOR
    from trainer.triton.publish import publish
    from trainer.triton.repository import manifest, render_repository

    torch.set_num_threads(2)
    shape = world(items, users)
    began = time.perf_counter()
    config = SyntheticConfig(
        n_users=shape["users"],
        n_items=items,
        n_genres=shape["genres"],
        mean_sessions_per_user=shape["sessions"],
        mean_session_length=shape["length"],
        seed=seed,
    )
    data = generate_counts(config)
    generate_s, plays = time.perf_counter() - began, float(data.weights.sum())
    peaks = {"generate": peak_rss_mib()}
    params = ALSParams(factors=64, iterations=ALS_ITERATIONS, seed=seed)
    model = ALS(params)
    began = time.perf_counter()
    model.fit(data)
    fit_s = time.perf_counter() - began
    peaks["fit"] = peak_rss_mib()
    history = data.to_csr()
    began = time.perf_counter()
    save_run(work / "run", model, data, {"model": "als", "params": params.to_dict(), "note": "catalog_scale"})
    save_s = time.perf_counter() - began
    del data
    repository = work / "repository"
    render_repository(repository)
    policy = AnnPolicy(kind="hnsw", min_recall=GOAL_RECALL, sample_users=sample_users, seed=seed)
    began = time.perf_counter()
    exact_scan_ms = None
    if items > exact_max:
        ann, exact_scan_ms = publish_approximate(model, history, work / "run", repository, policy)
        del model
    else:
        del model
        with output_to(work / "publish.log"):
            publish(work / "run", repository, ann=policy)
        ann = manifest(repository, FACTOR, 1)["ann"]
    publish_s = time.perf_counter() - began
    peaks["publish"] = peak_rss_mib()

    lengths = np.diff(history.indptr)
    return {
        "items": items,
        "users": shape["users"],
        "genres": shape["genres"],
        "plays": round(plays),
        "pairs": int(history.nnz),
        "items_with_plays": int(np.count_nonzero(np.bincount(history.indices, minlength=items))),
        "exclude_width": max(int(lengths.max()) if len(lengths) else 1, 1),
        "generate_s": round(generate_s, 1),
        "fit_s": round(fit_s, 1),
        "als_iterations": ALS_ITERATIONS,
        "save_s": round(save_s, 1),
        "publish_s": round(publish_s, 1),
        "version": 1,
        "exact_published": items <= exact_max,
        "exact_scan_in_process_ms": exact_scan_ms,
        "ann": ann,
        "build_peak_rss_mib": round(peak_rss_mib(), 0),
        "peak_rss_mib_after": {phase: round(v, 0) for phase, v in peaks.items()},
    }


def publish_approximate(
    model: Any, history: Any, run_dir: Path, repository: Path, policy: Any
) -> tuple[dict[str, Any], float]:
    """Version 1 of the approximate path only (lookup, HNSW scorer) from the run's files, for catalogues
    whose exact exports do not fit the memory this shared machine allows: publish's parity check alone scores
    200 users against every item twice (2 x 8 GB at 10M items). Also times the exact scan in process: FAISS's
    exhaustive inner-product search over the same rows, one thread, one query at a time."""
    import shutil

    import faiss

    from serving.contract import IDS_FILE, MANIFEST_FILE, MODEL_CODE_FILE
    from trainer.ann import build_and_check, item_rows
    from trainer.export import user_table
    from trainer.triton.family import LOOKUP, SCORER_ANN
    from trainer.triton.publish import model_code

    users = user_table(model)
    _, items, bias = model.factors()
    fallback = np.bincount(history.indices, minlength=items.shape[0]).astype(np.float32)
    ann = build_and_check(items, bias, fallback, users, history, repository / SCORER_ANN / "1", policy).as_manifest()
    rows = item_rows(items, bias)
    del items
    queries = users[:30].copy()
    queries[:, -1] = 1.0
    faiss.omp_set_num_threads(1)
    began = time.perf_counter()
    for query in queries:
        faiss.knn(query[None, :], rows, 10, metric=faiss.METRIC_INNER_PRODUCT)
    exact_ms = (time.perf_counter() - began) / len(queries) * 1e3
    del rows
    manifest = json.dumps({"version": 1, "family": "factor", "n_items": int(fallback.size), "ann": ann}) + "\n"
    for step in (LOOKUP, SCORER_ANN):
        folder = repository / step / "1"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_code(step), folder / MODEL_CODE_FILE)
        shutil.copy2(run_dir / IDS_FILE, folder / IDS_FILE)
        (folder / MANIFEST_FILE).write_text(manifest)
    shutil.copy2(run_dir / "history.npz", repository / LOOKUP / "1" / "history.npz")
    np.save(repository / LOOKUP / "1" / "users.npy", users)
    return ann, round(exact_ms, 2)


# ------------------------------------------------------------------------------------------------ audience


def synthetic_history(users: int, items: int, plays: int, seed: int, folder: Path) -> dict[str, Any]:
    """A lookup's files for ``users`` listeners with ~``plays`` plays in all, built a chunk of users at a time
    (listeners' lengths lognormal, items skewed to popular ones): ``ids.npz``, ``history.npz``, ``users.npy``."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, rng.lognormal(np.log(plays / users) - 0.5, 1.0, size=users)).astype(np.int64)
    indptr, parts, counts = [np.zeros(1, dtype=np.int64)], [], []
    for start in range(0, users, 50_000):
        chunk = lengths[start : start + 50_000]
        owner = np.repeat(np.arange(len(chunk), dtype=np.int64), chunk)
        item = (items * rng.random(len(owner)) ** 3).astype(np.int64)  # rank r played ~ r^(-2/3)
        keys, count = np.unique(owner * items + item, return_counts=True)
        parts.append((keys % items).astype(np.int32))
        counts.append(count.astype(np.float32))
        indptr.append(indptr[-1][-1] + np.cumsum(np.bincount(keys // items, minlength=len(chunk))))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "ids.npz", user_ids=np.arange(users, dtype=np.int64), item_ids=np.arange(items, dtype=np.int64))
    indices, data = np.concatenate(parts), np.concatenate(counts)
    np.savez(folder / "history.npz", indptr=np.concatenate(indptr), indices=indices, data=data)
    table = np.zeros((users + 1, 65), dtype=np.float32)
    table[:-1, :64] = rng.standard_normal((users, 64), dtype=np.float32) * 0.1
    table[-1, -1] = 1.0
    np.save(folder / "users.npy", table)
    return {"users": users, "items": items, "plays": int(lengths.sum()), "pairs": len(indices)}


def audience(users: int, items: int, plays: int, seed: int, work: Path) -> dict[str, Any]:
    """The lookup step at audience scale: its start time and memory (``serving.lookup.UserLookup``, as
    ``recsys_lookup`` loads it), then one batch of 64 known listeners; runs in a child process."""
    from benchmarks.harness.facts import current_rss_mib
    from serving.lookup import UserLookup

    began = time.perf_counter()
    world = synthetic_history(users, items, plays, seed, work / "lookup")
    world["generate_s"] = round(time.perf_counter() - began, 1)
    world["generate_peak_rss_mib"] = round(peak_rss_mib(), 0)
    before = current_rss_mib() or 0.0
    began = time.perf_counter()
    lookup = UserLookup(work / "lookup")
    world["lookup_start_s"] = round(time.perf_counter() - began, 1)
    world["lookup_rss_mib"] = round((current_rss_mib() or 0.0) - before, 0)
    world["longest_history"] = int(lookup.width)
    world["csr_mib"] = round((lookup.indptr.nbytes + lookup.indices.nbytes) / 2**20, 0)
    chosen = np.random.default_rng(seed).choice(users, 64, replace=False)
    began = time.perf_counter()
    lookup([str(u) for u in chosen.tolist()])
    world["batch_of_64_ms"] = round((time.perf_counter() - began) * 1e3, 2)
    world["peak_rss_mib"] = round(peak_rss_mib(), 0)
    return world


# ------------------------------------------------------------------------------------------------ serving


def served_recall(url: str, user_ids: list[str], k: int = 10) -> float:
    """recall@10 of the approximate ensemble's answers against the exact ensemble's, through gRPC, one listener per
    request as at c=1."""
    from recsys.core.triton_client import TritonRecommender

    client = TritonRecommender(url)
    hits = total = 0
    try:
        for start in range(len(user_ids)):
            batch = user_ids[start : start + 1]
            exact = client.recommend(EXACT, batch, top_k=k)
            approximate = client.recommend(APPROXIMATE, batch, top_k=k)
            for want, got in zip(exact, approximate, strict=True):
                hits += len(set(want.item_ids) & set(got.item_ids))
                total += len(want.item_ids)
    finally:
        client.close()
    return hits / total if total else 1.0


def serve(
    repository: Path, inputs: dict[str, Path], user_ids: list[str], args: argparse.Namespace, work: Path, exact: bool
) -> dict[str, Any]:
    from recsys.stack.memory import settled_tree_memory
    from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer

    analyzer = find_perf_analyzer()
    measurement = Measurement(
        request_count=args.request_count, stability_percentage=args.stability, max_trials=args.max_trials
    )
    config = TritonConfig(
        model_repository=repository,
        ports=TritonPorts.auto(),
        workdir=REPO_ROOT / ".cache" / "triton",
        model_timeout_s=1800.0,
    )
    load_s: dict[str, float] = {}
    with TritonServer(config) as server:
        assert server.pid is not None
        for name in LOAD_ORDER if exact else tuple(m for m in LOAD_ORDER if m not in EXACT_ONLY):
            began = time.perf_counter()
            server.load_model(name)
            load_s[name] = round(time.perf_counter() - began, 2)
        loaded = settled_tree_memory(server.pid)
        say(f"loaded in {sum(load_s.values()):.1f} s ({load_s}); RSS {loaded.rss_mib:,.0f} MiB")
        recall = served_recall(server.urls.grpc, user_ids[: args.recall_users]) if exact else None
        say(f"served recall@10 {recall}")
        runs: dict[str, dict[str, Any]] = {}
        for model in (APPROXIMATE, EXACT) if exact else (APPROXIMATE,):
            runs[model] = {"failures": {}}
            for c in args.concurrency:
                # Above c=1 the shared cores rarely give 40%-stable windows: accept any window, say so in the notes.
                loose = Measurement(request_count=args.request_count, stability_percentage=100.0, max_trials=4)
                run = run_perf_analyzer(
                    analyzer,
                    model,
                    server.urls.grpc,
                    concurrency=[c],
                    work_dir=work / "perf_analyzer",
                    input_data=inputs["by_id"],
                    measurement=measurement if c == 1 else loose,
                    timeout_s=args.pa_timeout,
                    log=say,
                )
                row = run.row(c)
                runs[model][str(c)] = (
                    None
                    if row is None
                    else {
                        "p50_ms": row.p50_ms,
                        "p99_ms": row.p99_ms,
                        "throughput": row.throughput,
                        "avg_ms": row.avg_ms,
                        # the server's average per request of the ensemble and of each of its steps
                        "steps_ms": {stats.model: round(stats.avg_request_ms, 3) for stats in row.server},
                        "step_parts_ms": {
                            stats.model: {part: round(ms, 3) for part, ms in stats.parts_ms.items()}
                            for stats in row.server
                        },
                    }
                )
                runs[model]["failures"].update({str(k): why for k, why in run.failures.items()})
        after = settled_tree_memory(server.pid)
        ready = server.ready_after_s
    return {
        "ready_s": ready,
        "load_s": load_s,
        "rss_loaded_mib": loaded.rss_mib,
        "pss_loaded_mib": loaded.pss_mib,
        "rss_after_mib": after.rss_mib,
        "per_process_mib": loaded.per_process,
        "served_recall_at_10": None if recall is None else round(recall, 4),
        "perf": runs,
    }


def stub_rss(per_process: dict[str, float], model: str) -> float:
    return sum(v for k, v in per_process.items() if f"stub {model}/" in k)


# ------------------------------------------------------------------------------------------------ report


def _perf(size: dict[str, Any], model: str, c: int, key: str) -> float | None:
    row = size["serving"]["perf"].get(model, {}).get(str(c))
    return None if row is None else float(row[key])


def checks(sizes: list[dict[str, Any]], lo: int) -> list[list[str]]:
    out = []
    for size in sizes:
        items = f"{size['items']:,} items"
        goal = GOAL_P50_MS.get(size["items"])
        p50 = _perf(size, APPROXIMATE, lo, "p50_ms")
        if goal is not None:
            out.append([f"{items}: {APPROXIMATE} p50 at c={lo}", fmt(p50), f"<= {goal:g} ms", _yes(p50, goal)])
        if size["items"] >= 10_000_000:
            recall = _recall(size)
            out.append([f"{items}: recall@10", fmt(recall, 4), f">= {GOAL_RECALL}", _yes(GOAL_RECALL, recall)])
            rss = size["serving"]["rss_loaded_mib"]
            ann_only = rss - stub_rss(size["serving"]["per_process_mib"], "recsys_scorer_onnx")
            limit = f"<= {GOAL_RSS_10M_MIB:,}"
            out.append([f"{items}: Triton RSS, both scorers (MiB)", fmt(rss, 0), limit, _yes(rss, GOAL_RSS_10M_MIB)])
            out.append(
                [
                    f"{items}: Triton RSS less the exact scorer (MiB)",
                    fmt(ann_only, 0),
                    limit,
                    _yes(ann_only, GOAL_RSS_10M_MIB),
                ]
            )
    return out


def _recall(size: dict[str, Any]) -> float:
    """Served recall vs the exact ensemble where both were served, else the publish gate's (held-out users)."""
    served = size["serving"]["served_recall_at_10"]
    return float(size["ann"]["recall_at_10"] if served is None else served)


def _yes(value: float | None, limit: float) -> str:
    """``value <= limit``, as the goals table writes it."""
    return "-" if value is None else ("yes" if value <= limit else "**no**")


def step_lines(sizes: list[dict[str, Any]], level: int) -> list[list[str]]:
    """Per size and ensemble, the server's average per request of the ensemble and of each step, at ``level``."""
    rows = []
    for size in sizes:
        for model in (EXACT, APPROXIMATE):
            measured = (size["serving"]["perf"].get(model) or {}).get(str(level)) or {}
            steps = dict(measured.get("steps_ms") or {})
            if not steps:
                continue
            whole = steps.pop(model, None)
            parts = measured.get("step_parts_ms") or {}
            rows.append(
                [
                    f"{size['items']:,}",
                    f"`{model}`",
                    fmt(measured.get("avg_ms")),
                    fmt(whole),
                    ", ".join(f"{name} {fmt(ms)}{_parts(parts.get(name))}" for name, ms in steps.items()),
                ]
            )
    return rows


def _parts(parts: dict[str, float] | None) -> str:
    """A step's split as `` (queue q / input i / infer c / output o)``, where perf_analyzer reported it."""
    if not parts:
        return ""
    names = ("queue", "compute_input", "compute_infer", "compute_output")
    return " (" + " / ".join(f"{name.removeprefix('compute_')} {fmt(parts.get(name))}" for name in names) + ")"


def render(payload: dict[str, Any]) -> str:
    lo, hi = min(payload["concurrency"]), max(payload["concurrency"])
    sizes = payload["sizes"]
    bw = payload["bandwidth"]
    lines = [
        f"# Catalogue scale: exact vs approximate retrieval ({payload['mode']})",
        "",
        f"{payload['finished_at']}, git {payload['git']}, {payload['machine']['cpu']} "
        f"({payload['machine']['usable_cores']} usable cores, {payload['machine']['memory_gib']} GiB). "
        f"`uptime` load average {payload['load_average']['start']} at start, {payload['load_average']['end']} at end "
        "(any other work on the 2 cores shows in every latency here).",
        "",
        "Per size, one recipe (`world`): the synthetic world of `trainer.data.synthetic.generate_counts` with items / "
        "10 listeners of ~100 plays each (10M items: 1M listeners, 100M plays), genres of ~10,000 items; ALS 64 "
        f"factors ({ALS_ITERATIONS} iterations), published with "
        "`trainer.triton.publish.publish` (exact TorchScript + ONNX exports with parity, and an HNSW index for "
        "`recsys_scorer_ann`, tuned and recall-gated on disjoint user samples). Requests: real users cycled, "
        f"TOP_K = 10, gRPC, batch 1; perf_analyzer {payload['perf_analyzer']}, {payload['measurement']}.",
        "",
        "## Latency, throughput, recall",
        "",
    ]
    rows = []
    for size in sizes:
        for model, label in ((EXACT, "exact (ONNX scan)"), (APPROXIMATE, "approximate (HNSW)")):
            recall = 1.0 if model == EXACT else _recall(size)
            if model == EXACT and not size["exact_published"]:
                floor = size["exact_scan_in_process_ms"]
                rows.append([f"{size['items']:,}", f"`{model}` not served (see notes)", f"({floor} in process)"])
                rows[-1] += ["-", "-", "1.0000"]
                continue
            rows.append(
                [
                    f"{size['items']:,}",
                    f"`{model}` {label}",
                    fmt(_perf(size, model, lo, "p50_ms")),
                    fmt(_perf(size, model, lo, "p99_ms")),
                    fmt(_perf(size, model, hi, "throughput"), 0),
                    fmt(recall, 4),
                ]
            )
    lines += [
        markdown_table(
            ["items", "ensemble", f"p50 ms c={lo}", f"p99 ms c={lo}", f"infer/s c={hi}", "recall@10 vs exact"], rows
        ),
        "",
        "## Build, index and memory",
        "",
    ]
    rows = []
    for size in sizes:
        ann, serving = size["ann"], size["serving"]
        per_process = serving["per_process_mib"]
        item_bytes = size["items"] * 65 * 4
        rows.append(
            [
                f"{size['items']:,}",
                f"{size['users']:,} x {size['plays']:,} ({size['pairs']:,} pairs, {size['items_with_plays']:,} items "
                "played)",
                f"{size['generate_s']:.0f} / {size['fit_s']:.0f}",
                f"{size['publish_s']:.0f}",
                f"{ann['build_seconds']:.0f} + {ann['check_seconds']:.0f}",
                f"ef {ann['ef_search']}: {ann['recall_at_10']:.4f} (tuning {ann['tuning_recall_at_10']})",
                fmt(ann["index_bytes"] / 2**20, 0),
                " / ".join(fmt(v, 0) for v in size["peak_rss_mib_after"].values()),
                f"{serving['load_s']['recsys_scorer_ann']:.1f} / {serving['load_s'].get('recsys_scorer_onnx', '-')}",
                f"{serving['load_s']['recsys_lookup']:.1f} / {stub_rss(per_process, 'recsys_lookup'):,.0f}",
                fmt(serving["rss_loaded_mib"], 0),
                f"{stub_rss(serving['per_process_mib'], 'recsys_scorer_ann'):,.0f} / "
                f"{stub_rss(serving['per_process_mib'], 'recsys_scorer_onnx'):,.0f}",
                fmt(item_bytes / 1e9 / bw["numpy_copy_gbs"] * 1e3, 2),
            ]
        )
    lines += [
        markdown_table(
            [
                "items",
                "listeners x plays",
                "generate / ALS fit s",
                "publish s",
                "index build + gate s",
                "gate recall@10",
                "index MiB",
                "peak RSS MiB generate / fit / publish",
                "load s ann / exact",
                "lookup load s / RSS MiB",
                "Triton RSS MiB",
                "stub RSS MiB ann / exact",
                "exact scan floor ms",
            ],
            rows,
        ),
        "",
        f"*exact scan floor*: the items' bytes (n x 65 x 4 B) over one thread's copy bandwidth, "
        f"{bw['numpy_copy_gbs']:.1f} GB/s ((read + write) / s on a {bw['array_mib']} MiB array): the least one "
        "exact pass costs the single-threaded ONNX scorer. *publish s* includes the exact exports, their parity "
        "check, the index build and the gate. *Triton RSS* is the server and every stub with the size's ensembles "
        "loaded. *lookup*: `recsys_lookup`'s load time and its stub's RSS (the listeners' ids, vectors and "
        "histories: the audience's share).",
        "",
        *(
            [
                "**Not measured** (the build failed): "
                + ", ".join(f"{int(k):,} items: {why}" for k, why in failed.items()),
                "",
            ]
            if (failed := payload.get("failed"))
            else []
        ),
        "## Where the time goes (c=1)",
        "",
        "The server's average per request (perf_analyzer's server report) for the ensemble as a whole and for each "
        "of its steps (queue, input, compute and output: a python-backend step's includes the round trip to its "
        "stub process), against the client's average latency (the difference is gRPC and perf_analyzer).",
        "",
        markdown_table(
            ["items", "ensemble", "client avg ms", "server: ensemble", "steps ms (queue / input / infer / output)"],
            step_lines(sizes, lo),
        ),
        "",
        "## Goals",
        "",
        markdown_table(["check", "value", "goal", "met"], checks(sizes, lo)),
        "",
    ]
    if payload.get("notes"):
        lines += ["## Notes", "", *[f"* {note}" for note in payload["notes"]], ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catalog_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int_list, default=list(DEFAULT_SIZES), help="catalogue sizes (items)")
    parser.add_argument("--users", type=int, default=None, help="listeners per size (default: items / 10)")
    parser.add_argument("--concurrency", type=int_list, default=[1, 16], help="levels (default 1,16)")
    parser.add_argument("--request-users", type=int, default=1000, help="distinct real users in the input data")
    parser.add_argument("--recall-users", type=int, default=320, help="users whose served answers are compared")
    parser.add_argument("--sample-users", type=int, default=500, help="users per recall sample of the gate")
    parser.add_argument(
        "--exact-max-items",
        type=int,
        default=10_000_000,
        help="largest catalogue published with the exact exports too (above: approximate only; default 10M)",
    )
    parser.add_argument("--request-count", type=int, default=300, help="perf_analyzer requests per window")
    parser.add_argument("--stability", type=float, default=40.0, help="--stability-percentage (shared cores: 40)")
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--pa-timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke test (<stem>-quick)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stem", default=None, help="results file stem (default catalog_scale[-quick])")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--audience",
        type=int_list,
        help="USERS,ITEMS,PLAYS: only measure the lookup's start time and memory at that audience (child process)",
    )
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)  # child: build one size into --work
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # child: the --audience work
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.request_count, args.stability, args.max_trials = 100, 50.0, 3
    args.stem = args.stem or "catalog_scale" + ("-quick" if args.quick else "")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build is not None:  # the child process
        print(json.dumps(build(args.build, args.users, args.work, args.seed, args.sample_users, args.exact_max_items)))
        return 0
    if args.audience and args.child:
        users, items, plays = args.audience
        print(json.dumps(audience(users, items, plays, args.seed, args.work)))
        return 0
    if args.audience:
        return measure_audience(args)
    from benchmarks.triton_perf import memory_bandwidth

    started_at, load_start = now_utc(), load_average()
    say("measuring memory bandwidth ...")
    bandwidth = memory_bandwidth()
    sizes: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for items in args.sizes:
        with work_folder(f"catalog_scale-{items}-", keep=args.keep) as work:
            say(f"{items:,} items: building and publishing (child process) ...")
            child = [sys.executable, "-m", "benchmarks.catalog_scale", "--build", str(items), "--work", str(work)]
            child += ["--seed", str(args.seed), "--sample-users", str(args.sample_users)]
            child += [] if args.users is None else ["--users", str(args.users)]
            child += ["--exact-max-items", str(args.exact_max_items)]
            done = subprocess.run(child, check=False, capture_output=True, text=True, cwd=REPO_ROOT)
            if done.returncode != 0:
                failed[str(items)] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                say(f"{items:,} items: the build failed (the other sizes go on):\n{done.stderr[-3000:]}")
            else:
                size = json.loads(done.stdout.strip().splitlines()[-1])
                say(f"built: {json.dumps(size)}")
                repository = work / "repository"
                requests = sample_requests(repository, size["version"], args.request_users, 10, args.seed)
                inputs = write_input_data(requests, work / "inputs")
                size["serving"] = serve(repository, inputs, requests.user_ids, args, work, size["exact_published"])
                size["load_average_after"] = load_average()
                sizes.append(size)
        # after every size, so an hour's figures survive a later size's failure
        md_path = report(args, started_at, load_start, bandwidth, sizes, failed)
    print(md_path.read_text())
    say(f"wrote {md_path}")
    return 1 if failed else 0


def report(
    args: argparse.Namespace,
    started_at: str,
    load_start: float | None,
    bandwidth: Any,
    sizes: list[dict[str, Any]],
    failed: dict[str, str],
) -> Path:
    """Writes ``<stem>.{md,json}`` for the sizes measured so far; returns the Markdown's path."""
    payload: dict[str, Any] = {
        **run_header("catalog_scale", args.stem, started_at, load_start, PACKAGES),
        "concurrency": args.concurrency,
        "perf_analyzer": find_perf_analyzer().version(),
        "measurement": (
            f"count_windows of {args.request_count}, stability {args.stability}%, max {args.max_trials} trials"
        ),
        "bandwidth": bandwidth.__dict__,
        "sizes": sizes,
        "failed": failed,
        "notes": [
            "One world recipe at every size (`world`): items / 10 listeners of ~100 plays each (10 sessions of 10, "
            "one genre per session), genres of ~10,000 items, Zipf popularity, built by "
            "`trainer.data.synthetic.generate_counts` a chunk of listeners at a time. Part of each catalogue is never "
            "played (the table's *items played*); ALS leaves those items' factors at ~1e-11, so they score their "
            "bias for everyone and are merged in by that score instead of being indexed (`trainer.ann`).",
            f"c=1 windows must be {args.stability:g}% stable; above c=1 any window is accepted (stability 100%, 4 "
            "trials), since the 2 cores rarely give a 40%-stable window at higher levels.",
            "The served recall compares `recsys_ann` with `recsys_b` through gRPC, one listener per request; the "
            "gate's figure is on held-out users against the exact top-10, in process, one per call. Each row is "
            "searched with its heard items left out by a FAISS id selector (`serving.retrieval`).",
            "The index is HNSW with `trainer.ann.AnnPolicy`'s defaults (32 links per item, built with 80 "
            "candidates); why those, measured: `trainer.ann`'s docstring.",
        ],
    }
    md_path, _ = write_results(args.out, args.stem, render(payload), payload)
    return md_path


def measure_audience(args: argparse.Namespace) -> int:
    """``--audience``: the lookup at that audience (child process), written to ``<stem>-audience.{md,json}``."""
    users, items, plays = args.audience
    load_start = load_average()
    with work_folder("catalog_scale-audience-", keep=args.keep) as work:
        child = [sys.executable, "-m", "benchmarks.catalog_scale", "--audience", f"{users},{items},{plays}"]
        child += ["--child", "--work", str(work), "--seed", str(args.seed)]
        done = subprocess.run(child, check=False, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        say(f"the audience measurement failed:\n{done.stderr[-3000:]}")
        return 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    payload = {"benchmark": "catalog_scale", "mode": f"{args.stem}-audience", "finished_at": now_utc(),
               "git": git_revision(), "machine": machine(),
               "load_average": {"start": load_start, "end": load_average()}, "audience": result}  # fmt: skip
    md = "\n".join(
        [
            f"# Catalogue scale: the lookup at {users:,} listeners ({payload['mode']})",
            "",
            f"{payload['finished_at']}, git {payload['git']}; `uptime` load {load_start} at start, "
            f"{payload['load_average']['end']} at end (shared 2 cores).",
            "",
            markdown_table(
                ["measure", "value"], [[k, f"{v:,}" if isinstance(v, int) else v] for k, v in result.items()]
            ),
            "",
            "`serving.lookup.UserLookup` as `recsys_lookup` loads it, in one process: *lookup_rss_mib* is what it "
            "added, *csr_mib* the histories it holds (CSR: int64 row pointers, int32 item indices; each batch's rows "
            "are padded when the batch arrives, to the version's longest history), *batch_of_64_ms* one call for 64 "
            "known listeners.",
            "",
        ]
    )
    md_path, _ = write_results(args.out, f"{args.stem}-audience", md, payload)
    print(md)
    say(f"wrote {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
