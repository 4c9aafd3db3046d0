"""GRU4Rec against the popularity and item-kNN baselines on next-item prediction, plus its exported scorer.

Protocol (the GRU4Rec papers' and the official ``evaluation.py``): plays are cut into sessions at pauses of
30 minutes or more, items with fewer than 5 plays and then sessions with fewer than 2 plays are dropped, the
last 10% of sessions by end time are the test set (test plays of items unseen in training dropped), and every
play of a test session after its first is predicted from the plays before it. The target is ranked among all
items, ties counted against it (``conservative``); Recall@20 and MRR@20 are averaged over all predictions.
A second pair of columns removes the session's earlier plays from the ranking, as the served top-k does.

Data: the synthetic music world (``trainer.data.synthetic``: genre sessions whose next play is, with chance
0.6, the next item of the genre's fixed order) and, when ``../shared/data`` holds it, Last.fm-1K
(consecutive plays of the same artist collapsed, the last ``--lastfm-days`` days only, to fit 2 cores).

    .venv/bin/python -m benchmarks.gru4rec            # writes benchmarks/results/gru4rec.{md,json}
    .venv/bin/python -m benchmarks.gru4rec --quick    # smoke test, 1 epoch, small world: gru4rec-quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from benchmarks.harness.facts import RESULTS_DIR, SHARED_DATA, git_revision, load_average, machine, now_utc, versions
from benchmarks.harness.tables import markdown_table, write_results
from serving.contract import ITEM_SEQUENCE, ITEMS, SCORES, TOP_K
from trainer.data.interactions import Events
from trainer.data.lastfm1k import load_lastfm1k
from trainer.data.synthetic import SyntheticConfig, generate
from trainer.export_session import export_session_all
from trainer.models.gru4rec import GRU4Rec, GRU4RecParams
from trainer.models.item_knn_sessions import SessionItemKNN, SessionItemKNNParams
from trainer.sessions import (
    NextItemScorer,
    SessionPopularity,
    Sessions,
    SessionSplit,
    evaluate_next_item,
    sessionize,
    temporal_split,
)

LASTFM_1K = SHARED_DATA / "lastfm-dataset-1K" / "userid-timestamp-artid-artname-traid-traname.tsv"
MIN_ITEM_SUPPORT = 5  # the official preprocessing's item filter
TEST_FRACTION = 0.1
K = 20
SERVE_LEN = 50  # L of the exported scorer's ITEM_SEQUENCE (GRU4RecParams.max_sequence_length)

console = Console(stderr=True, highlight=False)


def log(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class DataSet:
    name: str
    split: SessionSplit
    description: str

    def shape(self) -> dict[str, Any]:
        train, test = self.split.train, self.split.test
        return {
            "items": int((train.item_counts() > 0).sum()),
            "train_sessions": len(train),
            "train_plays": train.n_events,
            "test_sessions": len(test),
            "test_plays": test.n_events,
            "split_time": self.split.split_time,
            "mean_session_length": float(train.lengths.mean()),
        }


def preprocess(sessions: Sessions) -> SessionSplit:
    """Items with fewer than 5 plays go, then sessions under 2 plays; then the temporal split."""
    supported = sessions.item_counts() >= MIN_ITEM_SUPPORT
    sessions = sessions.keep_plays(supported[sessions.items], min_length=2)
    return temporal_split(sessions, test_fraction=TEST_FRACTION)


def synthetic(config: SyntheticConfig) -> DataSet:
    world = generate(config)
    events = world.interactions.events
    assert events is not None
    split = preprocess(sessionize(events, world.n_items))
    description = (
        f"synthetic world: {config.n_users:,} listeners, {config.n_items:,} items in {config.n_genres} genres, "
        f"p_sequential {config.p_sequential}, seed {config.seed}"
    )
    return DataSet("synthetic", split, description)


def lastfm1k(path: Path, days: float) -> DataSet:
    data = load_lastfm1k(path)
    events = data.events
    assert events is not None
    recent = events.timestamps >= events.timestamps.max() - int(days * 86_400)
    events = Events(events.users[recent], events.items[recent], events.timestamps[recent])
    split = preprocess(sessionize(events, data.n_items, collapse_repeats=True))
    return DataSet("lastfm-1k", split, f"Last.fm-1K ({path.name}), the last {days:g} days, repeats collapsed")


# ------------------------------------------------------------------------------------------------ models


@dataclass
class Row:
    data: str
    model: str
    params: dict[str, Any]
    fit_s: float
    metrics: dict[str, float]
    serving_metrics: dict[str, float]
    eval_s: float
    epoch_loss: list[float] = dataclasses.field(default_factory=list)
    epoch_s: list[float] = dataclasses.field(default_factory=list)


def measure(data: DataSet, name: str, params: dict[str, Any], fit: Any) -> tuple[Row, NextItemScorer]:
    start = time.perf_counter()
    model = fit()
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate_next_item(model, data.split.test, ks=(K,))
    eval_s = time.perf_counter() - start
    serving = evaluate_next_item(model, data.split.test, ks=(K,), exclude_seen=True)
    row = Row(data.name, name, params, fit_s, metrics, serving, eval_s)
    if isinstance(model, GRU4Rec):
        row.epoch_loss, row.epoch_s = model.log.epoch_loss, model.log.epoch_seconds
    log(
        f"{data.name} {name}: Recall@{K} {metrics[f'recall@{K}']:.4f}  MRR@{K} {metrics[f'mrr@{K}']:.4f}  "
        f"fit {fit_s:.1f} s"
    )
    return row, model


def run_models(data: DataSet, epochs: int | None) -> tuple[list[Row], GRU4Rec]:
    train = data.split.train
    rows = []
    row, _ = measure(data, "popularity", {}, lambda: SessionPopularity().fit(train))
    rows.append(row)
    knn_params = SessionItemKNNParams()
    row, _ = measure(data, "item-kNN", dataclasses.asdict(knn_params), lambda: SessionItemKNN(knn_params).fit(train))
    rows.append(row)
    served: GRU4Rec | None = None
    for label, loss in (("GRU4Rec cross-entropy", "cross-entropy"), ("GRU4Rec bpr-max", "bpr-max")):
        params = GRU4RecParams(loss=loss, max_sequence_length=SERVE_LEN)
        if epochs is not None:
            params = dataclasses.replace(params, n_epochs=epochs)
        row, model = measure(data, label, params.to_dict(), lambda p=params: GRU4Rec(p).fit_sessions(train))
        rows.append(row)
        if served is None:
            assert isinstance(model, GRU4Rec)
            served = model
    assert served is not None
    return rows, served


# ------------------------------------------------------------------------------------------------ export


def export_check(model: GRU4Rec, test: Sessions, repeats: int) -> dict[str, Any]:
    """Exports the scorer (L = SERVE_LEN), checks parity, and times one call per format at batch 1 and 64."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    sequences = np.full((64, SERVE_LEN), -1, dtype=np.int64)
    for row, s in enumerate(rng.choice(len(test), size=64, replace=len(test) < 64).tolist()):
        plays = test.session(s)[-SERVE_LEN:]
        sequences[row, : len(plays)] = plays
    with tempfile.TemporaryDirectory(prefix="recsys-gru4rec-") as tmp:
        start = time.perf_counter()
        result = export_session_all(model, Path(tmp))
        export_s = time.perf_counter() - start
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        scripted = torch.jit.load(str(result.torchscript))  # type: ignore[no-untyped-call]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(result.onnx), options, providers=["CPUExecutionProvider"])
        latency: dict[str, dict[str, float]] = {"torchscript": {}, "onnx": {}}
        for batch in (1, 64):
            seq = sequences[:batch]
            k = np.full((batch, 1), 10, dtype=np.int64)
            for fmt in latency:
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    if fmt == "torchscript":
                        with torch.inference_mode():
                            scripted(torch.from_numpy(seq), torch.from_numpy(k))
                    else:
                        session.run([SCORES, ITEMS], {ITEM_SEQUENCE: seq, TOP_K: k})
                    times.append(time.perf_counter() - start)
                latency[fmt][f"batch_{batch}_ms"] = 1000 * statistics.median(times)
        torch.set_num_threads(threads)
    log(f"export: {export_s:.1f} s, parity {result.parity.max_abs_score_diff}, latency {latency}")
    return {
        "export_s": export_s,
        "max_len": result.max_len,
        "parity_rows": result.parity.users_checked,
        "max_abs_score_diff": result.parity.max_abs_score_diff,
        "ids_identical": result.parity.ids_identical,
        "median_latency_ms_1_thread": latency,
        "repeats": repeats,
    }


# ------------------------------------------------------------------------------------------------ report


def render(meta: dict[str, Any], sets: list[dict[str, Any]], rows: list[Row], export: dict[str, Any]) -> str:
    lines = [
        f"# GRU4Rec: next-item prediction against popularity and item-kNN{' [quick]' if meta['quick'] else ''}",
        "",
        f"{meta['date']} · {meta['machine']['cpu']} · {meta['machine']['usable_cores']} cores · torch "
        f"{meta['versions']['torch']} ({meta['torch_threads']} threads, CPU) · commit {meta['git']} · load "
        f"average {meta['load_start']} at start, {meta['load_end']} at end",
        "",
    ]
    for found in sets:
        s = found["shape"]
        lines.append(
            f"**{found['name']}**: {found['description']}. {s['items']:,} items; train {s['train_sessions']:,} "
            f"sessions / {s['train_plays']:,} plays; test {s['test_sessions']:,} sessions / {s['test_plays']:,} "
            f"plays ({int(rows_for(rows, found['name'])[0].metrics['n_predictions']):,} predictions)."
        )
        lines.append("")
    lines.append(f"Last.fm-1K: {meta['lastfm1k']}")
    lines.append("")
    table = [
        [
            r.data,
            r.model,
            f"{r.metrics[f'recall@{K}']:.4f}",
            f"{r.metrics[f'mrr@{K}']:.4f}",
            f"{r.serving_metrics[f'recall@{K}']:.4f}",
            f"{r.serving_metrics[f'mrr@{K}']:.4f}",
            f"{r.fit_s:.1f}",
            f"{r.eval_s:.1f}",
        ]
        for r in rows
    ]
    header = ["data", "model", f"Recall@{K}", f"MRR@{K}", f"Recall@{K} (heard removed)", f"MRR@{K} (heard removed)"]
    lines += [markdown_table([*header, "fit s", "eval s"], table), ""]
    lines += [
        "Official protocol: all items ranked, ties against the target. *heard removed*: the session's earlier "
        "plays are taken out of the ranking, as the served top-k does; a target heard earlier in the session is "
        "then a miss. GRU4Rec rows use the official class defaults (layers [100], batch 64, Adagrad lr 0.05, "
        "momentum 0, n_sample 2048, sample_alpha 0.5, constrained embedding, bpreg 1, elu 0.5, no dropout, "
        f"{rows[-1].params['n_epochs']} epochs); item-kNN the official `Cosine` (100 neighbours, lambda 20).",
        "",
    ]
    for r in rows:
        if r.epoch_loss:
            per_epoch = ", ".join(f"{v:.3f}" for v in r.epoch_loss)
            lines.append(
                f"- {r.data} {r.model}: loss per epoch {per_epoch}; "
                f"{statistics.median(r.epoch_s):.1f} s per epoch (median)"
            )
    lines += [
        "",
        f"## Exported scorer (the first GRU4Rec row of {sets[0]['name']}, L = {export['max_len']})",
        "",
        f"Export of TorchScript + ONNX with the parity check: {export['export_s']:.1f} s. Parity on "
        f"{export['parity_rows']} sequences: max |score diff| "
        + ", ".join(f"{k} {v:.1e}" for k, v in export["max_abs_score_diff"].items())
        + "; top-10 ids identical: "
        + ", ".join(f"{k} {v}" for k, v in export["ids_identical"].items())
        + ".",
        "",
        markdown_table(
            ["format", "batch 1 ms", "batch 64 ms"],
            [
                [fmt, f"{v['batch_1_ms']:.2f}", f"{v['batch_64_ms']:.2f}"]
                for fmt, v in export["median_latency_ms_1_thread"].items()
            ],
        ),
        "",
        f"Median of {export['repeats']} calls in this process, 1 intra-op thread, sequences of real test "
        "sessions padded to L, top 10. The scorer alone: no Triton, no lookup.",
        "",
    ]
    return "\n".join(lines)


def rows_for(rows: list[Row], data: str) -> list[Row]:
    return [r for r in rows if r.data == data]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gru4rec",
        description="Next-item Recall@20 / MRR@20 of popularity, item-kNN and GRU4Rec on synthetic sessions (and "
        "Last.fm-1K when present), and the exported scorer's parity and latency. Writes <out>/gru4rec.{md,json}.",
    )
    parser.add_argument("--quick", action="store_true", help="small world, 1 epoch: gru4rec-quick.*")
    parser.add_argument("--epochs", type=int, default=None, help="GRU4Rec epochs (default: the official 10)")
    parser.add_argument("--users", type=int, default=1_500, help="synthetic listeners (default: %(default)s)")
    parser.add_argument("--items", type=int, default=3_000, help="synthetic items (default: %(default)s)")
    parser.add_argument("--lastfm1k", type=Path, default=LASTFM_1K, help="Last.fm-1K log (default: %(default)s)")
    parser.add_argument("--lastfm-days", type=float, default=30.0, help="Last.fm-1K days used (default: 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (default: 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = 1 if args.quick and args.epochs is None else args.epochs
    users, items = (300, 600) if args.quick else (args.users, args.items)
    load_start = load_average()
    started = time.perf_counter()

    datasets = [synthetic(SyntheticConfig(n_users=users, n_items=items, seed=1))]
    if args.lastfm1k.is_file() and not args.quick:
        datasets.append(lastfm1k(args.lastfm1k, args.lastfm_days))
        lastfm_note = f"used ({args.lastfm1k}, the last {args.lastfm_days:g} days)."
    else:
        lastfm_note = f"not found at {args.lastfm1k}; only the synthetic world was run."
        if args.quick:
            lastfm_note = "skipped in a quick run."
    log(f"Last.fm-1K {lastfm_note}")

    rows: list[Row] = []
    served: GRU4Rec | None = None
    for data in datasets:
        log(f"{data.name}: {data.shape()}")
        found, model = run_models(data, epochs)
        rows += found
        served = served or model
    assert served is not None
    export = export_check(served, datasets[0].split.test, repeats=20 if args.quick else 200)

    meta: dict[str, Any] = {
        "date": now_utc(),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions(("torch", "numpy", "scipy", "onnxruntime")),
        "torch_threads": args.threads,
        "git": git_revision(),
        "load_start": load_start,
        "load_end": load_average(),
        "wall_s": time.perf_counter() - started,
        "lastfm1k": lastfm_note,
        "protocol": {
            "idle_gap_s": 1800,
            "min_item_support": MIN_ITEM_SUPPORT,
            "test_fraction": TEST_FRACTION,
            "k": K,
            "ranking": "conservative (ties against the target), all items",
        },
    }
    sets = [{"name": d.name, "description": d.description, "shape": d.shape()} for d in datasets]
    markdown = render(meta, sets, rows, export)
    payload = {**meta, "datasets": sets, "rows": [dataclasses.asdict(r) for r in rows], "export": export}
    md_path, json_path = write_results(args.out, "gru4rec-quick" if args.quick else "gru4rec", markdown, payload)
    print(markdown)
    log(f"wrote {md_path} and {json_path} ({meta['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
