"""Our models against peer libraries on HetRec Last.fm 2K, random holdout (seed 42), in one process.

Every model sees the same split and is scored by the same metric code: ours through
:func:`trainer.evaluation.evaluate`, the peers by handing their top-20 lists (their own ``recommend`` where
they have one) to :func:`trainer.metrics.ranking_metrics` with exactly the arguments ``evaluate`` uses. Both
rank all items and exclude the user's training items. A parity check runs our ALS through both paths.

Rows: popularity, our ALS and BPR (default params), implicit 0.7.3 ALS (best of a 9-point grid) and BPR (best
of a 6-point grid), LightFM 1.17 WARP and BPR, implicit's BM25 item-kNN. Then two timing studies: ALS doing
the same work in both libraries (64 factors, 15 iterations, CG with 3 steps, one confidence matrix), and our
BPR's time to reach implicit BPR's quality.

    .venv/bin/python -m benchmarks.baselines            # full run, writes benchmarks/results/baselines.{md,json}
    .venv/bin/python -m benchmarks.baselines --quick    # smoke test: 1-point grids, few epochs, 1 timing run

Peer libraries are optional (``pip install -e '.[bench]'``, see benchmarks/README.md) and imported here only.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from rich.console import Console

from benchmarks.harness.facts import (
    RESULTS_DIR,
    SHARED_DATA,
    git_revision,
    load_average,
    machine,
    now_utc,
    usable_cores,
    versions,
)
from benchmarks.harness.tables import fmt, markdown_table, write_results
from trainer.data.interactions import Interactions
from trainer.data.load import load_dataset
from trainer.evaluation import evaluate
from trainer.metrics import hit_matrix, ranking_metrics
from trainer.models.als import ALS, ALSParams
from trainer.models.base import Recommender
from trainer.models.bpr import BPR, BPRParams
from trainer.models.popularity import Popularity
from trainer.splits import random_holdout

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

DEFAULT_DATA = SHARED_DATA / "hetrec2011-lastfm-2k"
PLAYS_FILE = "user_artists.dat"
K = 20  # length of every top list; metrics are taken at 10 and 20
SEED = 42  # the split's seed (anchors.md)
MODEL_SEED = 0
FACTORS = 64

# ../shared/notes/anchors.md: the split and the peers' figures measured there (NDCG@10, Recall@20).
ANCHOR_SPLIT = {"users": 1877, "items": 17617, "train_pairs": 74223, "test_pairs": 18578}
ANCHORS: dict[str, tuple[float, float]] = {
    "popularity": (0.082, 0.105),
    "implicit ALS": (0.225, 0.270),
    "implicit BPR": (0.135, 0.172),
    "LightFM WARP": (0.201, 0.242),
    "LightFM BPR": (0.164, 0.195),
    "implicit BM25 item-kNN": (0.186, 0.217),
}

INSTALL_HINT = """\
Peer libraries missing: this benchmark needs implicit==0.7.3 and lightfm==1.17 (the `bench` extra).
  .venv/bin/pip install implicit==0.7.3
  .venv/bin/pip install wheel && .venv/bin/pip install --no-build-isolation lightfm==1.17
If lightfm fails with "'dict' object has no attribute '__LIGHTFM_SETUP__'" (pip >= 24 always builds through
PEP 517), run benchmarks/install_peers.sh, which patches that line of lightfm's setup.py and builds it.
"""

console = Console(stderr=True, highlight=False)


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """How much work each model gets. ``None`` epochs/iterations mean: our params' defaults."""

    als_grid: tuple[tuple[float, float], ...]  # implicit ALS (regularization, alpha), conf = alpha * log1p(plays)
    als_iterations: int
    bpr_grid: tuple[tuple[float, float], ...]  # implicit BPR (learning_rate, regularization)
    bpr_iterations: int
    warp_epochs: int
    lightfm_bpr_epochs: int
    knn_k: int
    same_work_iterations: int
    repeats: int
    our_als_iterations: int | None
    our_bpr_epochs: int | None
    our_bpr_curve: tuple[int, ...]  # extra epoch counts for our BPR's time-to-quality curve


FULL = Settings(
    als_grid=tuple((reg, alpha) for reg in (0.01, 0.1, 1.0) for alpha in (1.0, 5.0, 20.0)),
    als_iterations=15,
    bpr_grid=tuple((lr, reg) for lr in (0.01, 0.05, 0.1) for reg in (0.001, 0.01)),
    bpr_iterations=300,
    warp_epochs=60,
    lightfm_bpr_epochs=30,
    knn_k=50,
    same_work_iterations=15,
    repeats=3,
    our_als_iterations=None,
    our_bpr_epochs=None,
    our_bpr_curve=(5, 10, 20, 40),
)
QUICK = Settings(
    als_grid=((0.1, 5.0),),
    als_iterations=15,
    bpr_grid=((0.05, 0.01),),
    bpr_iterations=20,
    warp_epochs=5,
    lightfm_bpr_epochs=5,
    knn_k=50,
    same_work_iterations=3,
    repeats=1,
    our_als_iterations=3,
    our_bpr_epochs=3,
    our_bpr_curve=(1,),
)


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Bench:
    """The split and everything the metric code needs, built once and shared by every model."""

    train: Interactions
    test: Interactions
    plays: sp.csr_matrix  # train play counts, users x items
    binary: sp.csr_matrix  # train pairs as 1.0
    test_matrix: sp.csr_matrix
    users: IntArray  # users with held-out pairs: the rows every top list is made for
    popularity: FloatArray  # share of training users who played each item (as evaluate computes it)

    @classmethod
    def load(cls, data_dir: Path) -> Bench:
        split = random_holdout(load_dataset(str(data_dir)), seed=SEED)
        train, test = split.train, split.test
        plays = train.to_csr()
        binary = plays.copy()
        binary.data = np.ones_like(binary.data)
        test_matrix = test.to_csr()
        users = np.flatnonzero(np.diff(test_matrix.indptr)).astype(np.int64)
        popularity = np.bincount(train.items, minlength=train.n_items) / max(train.n_users, 1)
        return cls(train, test, plays, binary, test_matrix, users, popularity.astype(np.float64))

    def shape(self) -> dict[str, int]:
        return {
            "users": self.train.n_users,
            "items": self.train.n_items,
            "train_pairs": len(self.train),
            "test_pairs": len(self.test),
            "eval_users": len(self.users),
        }

    def metrics(self, top_items: IntArray) -> dict[str, float]:
        """Exactly what :func:`trainer.evaluation.evaluate` computes, from a ready top-K matrix."""
        leaked = int(hit_matrix(top_items, self.plays, self.users).sum())
        if leaked:
            raise RuntimeError(f"{leaked} recommended items are training items: exclusion failed")
        out = ranking_metrics(top_items, self.users, self.test_matrix, self.popularity, (10, 20))
        out["n_eval_users"] = float(len(self.users))
        return out


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Row:
    """One line of the main table."""

    name: str
    metrics: dict[str, float]
    fit_s: float
    params: dict[str, Any]
    ours: bool = False
    counterpart: str | None = None  # our row whose fit time the ratio compares with
    grid: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        anchor = ANCHORS.get(self.name)
        return {
            "name": self.name,
            "ours": self.ours,
            "params": self.params,
            "fit_s": self.fit_s,
            "metrics": self.metrics,
            "counterpart": self.counterpart,
            "anchor": None if anchor is None else {"ndcg@10": anchor[0], "recall@20": anchor[1]},
            "grid": self.grid,
        }


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def log(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


def summary(metrics: dict[str, float]) -> str:
    return f"NDCG@10 {metrics['ndcg@10']:.4f}  Recall@20 {metrics['recall@20']:.4f}"


# ------------------------------------------------------------------------------------------------ ours


def fit_ours(model: Recommender, bench: Bench) -> tuple[dict[str, float], float]:
    seconds = timed(lambda: model.fit(bench.train))
    return evaluate(model, bench.train, bench.test), seconds


def check_metric_parity(model: Recommender, bench: Bench, reference: dict[str, float]) -> None:
    """The peers' path (top lists -> Bench.metrics) must give what evaluate gave for the same model."""
    top, _ = model.recommend(bench.users, K, exclude=bench.plays)
    again = bench.metrics(top)
    worst = max(abs(again[key] - reference[key]) for key in reference)
    if worst > 1e-9:
        raise RuntimeError(f"metric paths disagree by {worst:g}: the peers' figures would not be comparable")
    log("metric parity: evaluate() and the peers' path agree on our ALS")


def our_rows(bench: Bench, settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    metrics, seconds = fit_ours(Popularity(), bench)
    rows.append(Row("popularity", metrics, seconds, {}, ours=True))
    log(f"popularity: {summary(metrics)}")

    als_params = ALSParams()
    if settings.our_als_iterations is not None:
        als_params = dataclasses.replace(als_params, iterations=settings.our_als_iterations)
    als = ALS(als_params)
    metrics, seconds = fit_ours(als, bench)
    check_metric_parity(als, bench, metrics)
    rows.append(Row("ALS (ours)", metrics, seconds, als_params.to_dict(), ours=True))
    log(f"ALS (ours): {summary(metrics)}  fit {seconds:.2f} s")

    bpr_params = BPRParams()
    if settings.our_bpr_epochs is not None:
        bpr_params = dataclasses.replace(bpr_params, epochs=settings.our_bpr_epochs)
    metrics, seconds = fit_ours(BPR(bpr_params), bench)
    rows.append(Row("BPR (ours)", metrics, seconds, bpr_params.to_dict(), ours=True))
    log(f"BPR (ours): {summary(metrics)}  fit {seconds:.2f} s")
    return rows, {"als": als_params, "bpr": bpr_params}


# ------------------------------------------------------------------------------------------------ peers


def import_peers() -> tuple[ModuleType, ModuleType]:
    try:
        import implicit
        import lightfm
    except ImportError as exc:
        print(f"{INSTALL_HINT}\n(import error: {exc})", file=sys.stderr)
        sys.exit(2)
    for module, wanted in ((implicit, "0.7.3"), (lightfm, "1.17")):
        found = getattr(module, "__version__", "?")
        if found != wanted:
            log(f"[yellow]warning: {module.__name__} {found} installed; the anchors used {wanted}[/yellow]")
    return implicit, lightfm


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """implicit parallelises itself; a threaded OpenBLAS underneath slows it down (its own warning says so)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        yield


def implicit_top(model: Any, bench: Bench) -> IntArray:
    """implicit's own top-K, training items filtered out by implicit itself."""
    with one_blas_thread():
        ids, scores = model.recommend(bench.users, bench.plays[bench.users], N=K, filter_already_liked_items=True)
    top = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    top[~np.isfinite(scores) | (scores <= -np.finfo(np.float32).max)] = -1  # implicit pads with -FLT_MAX
    # implicit's item-kNN pads a user's list with zero-score items when fewer than N have a score, and that
    # filler can hold the user's own training items. They can never be relevant (test and train pairs are
    # disjoint), so blanking them changes no hit: it only keeps coverage honest and the exclusion check on.
    leaked = hit_matrix(top, bench.plays, bench.users)
    if leaked.any():
        log(f"  ({int(leaked.sum())} training items in implicit's zero-score filler blanked)")
        top[leaked] = -1
    return top


def top_k_dense(score: Callable[[IntArray], npt.NDArray[Any]], bench: Bench, batch_size: int = 1024) -> IntArray:
    """Top-K of dense score rows with the user's training items set to -inf (for LightFM, which has no top-K)."""
    out = np.full((len(bench.users), K), -1, dtype=np.int64)
    for start in range(0, len(bench.users), batch_size):
        batch = bench.users[start : start + batch_size]
        scores = np.array(score(batch), dtype=np.float64)
        rows, cols = bench.plays[batch].nonzero()
        scores[rows, cols] = -np.inf
        k = min(K, scores.shape[1])
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        top[~np.isfinite(np.take_along_axis(scores, top, axis=1))] = -1
        out[start : start + len(batch), :k] = top
    return out


def fit_implicit_als(
    conf: sp.csr_matrix, *, regularization: float, alpha: float, iterations: int, threads: int
) -> tuple[Any, float]:
    from implicit.als import AlternatingLeastSquares

    with one_blas_thread():
        model = AlternatingLeastSquares(
            factors=FACTORS,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            use_cg=True,
            use_gpu=False,
            num_threads=threads,
            random_state=MODEL_SEED,
        )
        seconds = timed(lambda: model.fit(conf, show_progress=False))
    return model, seconds


def implicit_als_row(bench: Bench, settings: Settings, threads: int) -> Row:
    conf = bench.plays.copy()
    conf.data = np.log1p(conf.data).astype(np.float32)  # implicit then multiplies by alpha
    grid: list[dict[str, Any]] = []
    for regularization, alpha in settings.als_grid:
        model, seconds = fit_implicit_als(
            conf, regularization=regularization, alpha=alpha, iterations=settings.als_iterations, threads=threads
        )
        metrics = bench.metrics(implicit_top(model, bench))
        grid.append(
            {"params": {"regularization": regularization, "alpha": alpha}, "fit_s": seconds, "metrics": metrics}
        )
        log(f"implicit ALS reg={regularization:g} alpha={alpha:g}: {summary(metrics)}  fit {seconds:.2f} s")
    return best_of(
        "implicit ALS", grid, {"factors": FACTORS, "iterations": settings.als_iterations, "conf": "alpha*log1p(plays)"}
    )


def implicit_bpr_row(bench: Bench, settings: Settings, threads: int) -> Row:
    from implicit.bpr import BayesianPersonalizedRanking

    grid: list[dict[str, Any]] = []
    for learning_rate, regularization in settings.bpr_grid:
        model = BayesianPersonalizedRanking(
            factors=FACTORS,
            learning_rate=learning_rate,
            regularization=regularization,
            iterations=settings.bpr_iterations,
            use_gpu=False,
            num_threads=threads,
            random_state=MODEL_SEED,
        )
        seconds = timed(partial(model.fit, bench.binary, show_progress=False))
        metrics = bench.metrics(implicit_top(model, bench))
        grid.append(
            {
                "params": {"learning_rate": learning_rate, "regularization": regularization},
                "fit_s": seconds,
                "metrics": metrics,
            }
        )
        log(f"implicit BPR lr={learning_rate:g} reg={regularization:g}: {summary(metrics)}  fit {seconds:.2f} s")
    return best_of("implicit BPR", grid, {"factors": FACTORS, "iterations": settings.bpr_iterations})


def best_of(name: str, grid: list[dict[str, Any]], fixed: dict[str, Any]) -> Row:
    """The grid point with the best test NDCG@10, as anchors.md reports the peers (optimistic for them)."""
    best = max(grid, key=lambda point: point["metrics"]["ndcg@10"])
    return Row(name, best["metrics"], best["fit_s"], {**fixed, **best["params"]}, grid=grid)


def lightfm_row(bench: Bench, loss: str, epochs: int, threads: int) -> Row:
    from lightfm import LightFM

    model = LightFM(no_components=FACTORS, loss=loss, random_state=MODEL_SEED)
    interactions = bench.binary.tocoo()
    seconds = timed(lambda: model.fit(interactions, epochs=epochs, num_threads=threads))
    # LightFM's predict() is user_bias + item_bias + <user, item>; the user bias does not change a user's ranking.
    item_bias, item_emb = model.get_item_representations()
    _, user_emb = model.get_user_representations()
    item_bias, item_emb, user_emb = (np.asarray(a, dtype=np.float64) for a in (item_bias, item_emb, user_emb))
    metrics = bench.metrics(top_k_dense(lambda users: user_emb[users] @ item_emb.T + item_bias, bench))
    name = f"LightFM {loss.upper()}"
    log(f"{name}: {summary(metrics)}  fit {seconds:.2f} s")
    params = {"no_components": FACTORS, "loss": loss, "epochs": epochs, "num_threads": threads}
    return Row(name, metrics, seconds, params)


def knn_row(bench: Bench, settings: Settings, threads: int) -> Row:
    from implicit.nearest_neighbours import BM25Recommender

    model = BM25Recommender(K=settings.knn_k, K1=1.2, B=0.75, num_threads=threads)
    with one_blas_thread(), warnings.catch_warnings():
        # BM25Recommender.fit hands its own COO matrix on and then warns about it: nothing to act on.
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        seconds = timed(lambda: model.fit(bench.plays, show_progress=False))
    metrics = bench.metrics(implicit_top(model, bench))
    log(f"implicit BM25 item-kNN: {summary(metrics)}  fit {seconds:.2f} s")
    return Row("implicit BM25 item-kNN", metrics, seconds, {"K": settings.knn_k, "K1": 1.2, "B": 0.75})


# ------------------------------------------------------------------------------------------------ timing studies


def same_work_als(
    bench: Bench, settings: Settings, threads: int, regularization: float, alpha: float
) -> dict[str, Any]:
    """Both ALS implementations solving identical systems: c = 1 + alpha * log1p(plays), 64 factors, CG(3).

    implicit's confidence is the matrix value itself (its ``alpha`` scales the matrix), ours is
    ``1 + alpha * w``; so implicit gets the matrix ``1 + alpha * log1p(plays)`` with ``alpha=1`` and ours
    ``weighting="log1p"`` with the same alpha. Runs alternate between the two so background load hits both.
    """
    conf = bench.plays.copy()
    conf.data = (1.0 + alpha * np.log1p(conf.data)).astype(np.float32)
    ours_params = ALSParams(
        factors=FACTORS,
        iterations=settings.same_work_iterations,
        regularization=regularization,
        alpha=alpha,
        weighting="log1p",
        solver="cg",
        cg_steps=3,
        seed=MODEL_SEED,
    )
    theirs_s: list[float] = []
    ours_s: list[float] = []
    theirs_model: Any = None
    ours_model = ALS(ours_params)
    for run in range(settings.repeats):
        theirs_model, seconds = fit_implicit_als(
            conf, regularization=regularization, alpha=1.0, iterations=settings.same_work_iterations, threads=threads
        )
        if theirs_model.cg_steps != 3:
            raise RuntimeError(f"implicit cg_steps is {theirs_model.cg_steps}, expected its default 3")
        theirs_s.append(seconds)
        ours_model = ALS(ours_params)
        ours_s.append(timed(partial(ours_model.fit, bench.train)))
        log(f"same-work ALS run {run + 1}/{settings.repeats}: implicit {theirs_s[-1]:.2f} s, ours {ours_s[-1]:.2f} s")
    theirs_median, ours_median = statistics.median(theirs_s), statistics.median(ours_s)
    return {
        "factors": FACTORS,
        "iterations": settings.same_work_iterations,
        "solver": "cg",
        "cg_steps": 3,
        "regularization": regularization,
        "alpha": alpha,
        "confidence": "1 + alpha * log1p(plays)",
        "implicit_threads": f"num_threads={threads}" + (f" (all {usable_cores()} cores)" if threads == 0 else ""),
        "torch_threads": torch.get_num_threads(),
        "implicit_fit_s": theirs_s,
        "ours_fit_s": ours_s,
        "implicit_median_s": theirs_median,
        "ours_median_s": ours_median,
        "ratio_ours_over_implicit": ours_median / theirs_median,
        "implicit_metrics": bench.metrics(implicit_top(theirs_model, bench)),
        "ours_metrics": evaluate(ours_model, bench.train, bench.test),
    }


def bpr_time_to_quality(
    bench: Bench, settings: Settings, bpr_params: BPRParams, ours_default: Row, theirs: Row
) -> dict[str, Any]:
    """Our BPR at a few epoch counts (same seed, so each is a prefix of the default run) vs implicit's best."""
    curve = [{"epochs": bpr_params.epochs, "fit_s": ours_default.fit_s, "ndcg@10": ours_default.metrics["ndcg@10"]}]
    for epochs in settings.our_bpr_curve:
        if epochs >= bpr_params.epochs:
            continue
        metrics, seconds = fit_ours(BPR(dataclasses.replace(bpr_params, epochs=epochs)), bench)
        curve.append({"epochs": epochs, "fit_s": seconds, "ndcg@10": metrics["ndcg@10"]})
        log(f"BPR (ours) {epochs} epochs: {summary(metrics)}  fit {seconds:.2f} s")
    curve.sort(key=lambda point: int(point["epochs"]))
    target = theirs.metrics["ndcg@10"]
    reached = next((point for point in curve if point["ndcg@10"] >= target), None)
    return {
        "implicit_params": theirs.params,
        "implicit_fit_s": theirs.fit_s,
        "implicit_ndcg@10": target,
        "ours_params": bpr_params.to_dict(),
        "ours_fit_s": ours_default.fit_s,
        "ours_ndcg@10": ours_default.metrics["ndcg@10"],
        "ratio_ours_over_implicit": ours_default.fit_s / theirs.fit_s,
        "curve": curve,
        "ours_epochs_to_reach_implicit": None if reached is None else reached["epochs"],
        "ours_seconds_to_reach_implicit": None if reached is None else reached["fit_s"],
    }


# ------------------------------------------------------------------------------------------------ report


def render(rows: list[Row], same_work: dict[str, Any], bpr: dict[str, Any], meta: dict[str, Any]) -> str:
    by_name = {row.name: row for row in rows}
    header = ["model", "NDCG@10", "Recall@20", "MAP@10", "coverage@10", "fit s", "ratio vs ours", "anchor NDCG@10"]
    lines: list[list[str]] = []
    for row in rows:
        m = row.metrics
        ratio = "-"
        if row.counterpart is not None and row.fit_s > 0:
            ours = by_name[row.counterpart]
            ratio = f"{ours.fit_s / row.fit_s:.2f} vs our {row.counterpart.split()[0]}"
        anchor = ANCHORS.get(row.name)
        lines.append(
            [
                f"{row.name}{describe(row)}",
                fmt(m["ndcg@10"], 4),
                fmt(m["recall@20"], 4),
                fmt(m["map@10"], 4),
                fmt(m["coverage@10"], 3),
                fmt(row.fit_s, 2),
                ratio,
                fmt(anchor[0], 3) if anchor else "-",
            ]
        )
    shape = meta["split"]
    parts = [
        f"# Baselines on HetRec Last.fm 2K, random holdout (seed {SEED})"
        + (" [QUICK: smoke settings, not comparable]" if meta["quick"] else ""),
        "",
        f"{meta['date']} · {meta['machine']['cpu']} · {meta['machine']['usable_cores']} cores · "
        f"torch {meta['versions']['torch']} ({torch.get_num_threads()} threads) · "
        f"implicit {meta['versions']['implicit']} · "
        f"lightfm {meta['versions']['lightfm']} · commit {meta['git']}",
        "",
        f"Split: {shape['users']:,} users, {shape['items']:,} items, {shape['train_pairs']:,} train / "
        f"{shape['test_pairs']:,} held-out pairs ({shape['eval_users']:,} users evaluated). All items ranked, the "
        "user's training items excluded; one metric code for every row.",
        "",
        markdown_table(header, lines),
        "",
        "*ratio vs ours* = fit seconds of our counterpart (named) / fit seconds of the row: above 1 means ours is "
        "slower (fit times are single runs; see the same-work section for a controlled comparison). "
        f"Load average at start / end: {meta['load_start']} / {meta['load_end']} on "
        f"{meta['machine']['usable_cores']} cores (above ~0.5 per core, other work skewed the timings). "
        "Peers with a grid show their best grid point by test NDCG@10, as anchors.md does (optimistic for "
        "them); ours use default params. *anchor* is the figure anchors.md measured for that peer.",
        "",
        "## Same work: ALS at equal factors, iterations and solver",
        "",
        f"{same_work['factors']} factors, {same_work['iterations']} iterations, conjugate gradient with "
        f"{same_work['cg_steps']} steps, regularization {same_work['regularization']:g}, confidence "
        f"{same_work['confidence']} with alpha {same_work['alpha']:g} (the same matrix for both). Median of "
        f"{len(same_work['ours_fit_s'])} runs. Threads: implicit {same_work['implicit_threads']}, torch "
        f"{same_work['torch_threads']}.",
        "",
        markdown_table(
            ["", "fit s (median)", "runs", "NDCG@10"],
            [
                [
                    "implicit ALS",
                    fmt(same_work["implicit_median_s"], 2),
                    ", ".join(f"{s:.2f}" for s in same_work["implicit_fit_s"]),
                    fmt(same_work["implicit_metrics"]["ndcg@10"], 4),
                ],
                [
                    "ALS (ours)",
                    fmt(same_work["ours_median_s"], 2),
                    ", ".join(f"{s:.2f}" for s in same_work["ours_fit_s"]),
                    fmt(same_work["ours_metrics"]["ndcg@10"], 4),
                ],
            ],
        ),
        "",
        f"**ours / implicit = {same_work['ratio_ours_over_implicit']:.2f}x** fit time for the same work.",
        "",
        "## BPR: time to quality",
        "",
        f"implicit BPR (best grid point, {bpr['implicit_params'].get('iterations')} iterations): "
        f"{bpr['implicit_fit_s']:.2f} s, NDCG@10 {bpr['implicit_ndcg@10']:.4f}. "
        f"Our BPR ({bpr['ours_params']['epochs']} epochs, defaults): {bpr['ours_fit_s']:.2f} s, NDCG@10 "
        f"{bpr['ours_ndcg@10']:.4f}; fit-time ratio ours / implicit = {bpr['ratio_ours_over_implicit']:.2f}.",
        "",
        markdown_table(
            ["our BPR epochs", "fit s", "NDCG@10"],
            [[str(p["epochs"]), fmt(p["fit_s"], 2), fmt(p["ndcg@10"], 4)] for p in bpr["curve"]],
        ),
        "",
        (
            f"Our BPR first matches implicit's NDCG@10 at {bpr['ours_epochs_to_reach_implicit']} epochs, "
            f"{bpr['ours_seconds_to_reach_implicit']:.2f} s "
            f"({bpr['ours_seconds_to_reach_implicit'] / bpr['implicit_fit_s']:.2f}x implicit's fit time)."
            if bpr["ours_epochs_to_reach_implicit"] is not None
            else "Our BPR does not reach implicit's NDCG@10 at any measured epoch count."
        ),
        "",
    ]
    return "\n".join(parts)


def describe(row: Row) -> str:
    p = row.params
    if row.name == "implicit ALS":
        return f" (reg {p['regularization']:g}, alpha {p['alpha']:g}; best of {len(row.grid)})"
    if row.name == "implicit BPR":
        grid = f"{p['iterations']} it; best of {len(row.grid)}"
        return f" (lr {p['learning_rate']:g}, reg {p['regularization']:g}, {grid})"
    if row.name.startswith("LightFM"):
        return f" ({p['epochs']} epochs)"
    if row.name == "implicit BM25 item-kNN":
        return f" (K={p['K']})"
    if row.name == "BPR (ours)":
        return f" ({p['epochs']} epochs)"
    if row.name == "ALS (ours)":
        return f" ({p['iterations']} it)"
    return ""


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines",
        description="Our popularity/ALS/BPR against implicit 0.7.3 and LightFM 1.17 on HetRec Last.fm 2K "
        "(random holdout, seed 42), one split and one metric code for all; plus same-work ALS timing and "
        "BPR time-to-quality. Writes <out>/baselines.md and .json. Full run: about 5-10 minutes on 2 cores.",
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="HetRec Last.fm 2K folder (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results (default: %(default)s)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1-point grids, a few epochs, 1 timing run; writes baselines-quick.{md,json}; "
        "figures are not comparable with the anchors",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="threads for implicit and LightFM; 0 = all cores (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per side in the same-work ALS timing (default 3)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.repeats is not None:
        settings = dataclasses.replace(settings, repeats=max(1, args.repeats))
    if not (args.data / PLAYS_FILE).is_file():
        print(
            f"HetRec Last.fm 2K not found: {args.data / PLAYS_FILE} does not exist.\n"
            "Pass --data /path/to/hetrec2011-lastfm-2k (the unzipped folder; never copy it into the repository).",
            file=sys.stderr,
        )
        return 1
    import_peers()
    lightfm_threads = args.threads if args.threads > 0 else usable_cores()
    log(
        f"threads: implicit num_threads={args.threads} (0 = all {usable_cores()} cores), "
        f"LightFM num_threads={lightfm_threads}, torch {torch.get_num_threads()}"
    )
    started = time.perf_counter()
    load_start = load_average()
    if load_start is not None and load_start > 0.5 * usable_cores():
        log(f"[yellow]warning: load average {load_start} on {usable_cores()} cores: timings will be skewed[/yellow]")
    bench = Bench.load(args.data)
    shape = bench.shape()
    log(f"split: {shape}")
    mismatch = {key: (shape[key], want) for key, want in ANCHOR_SPLIT.items() if shape[key] != want}
    if mismatch:
        log(f"[yellow]warning: split differs from anchors.md (got, expected): {mismatch}[/yellow]")

    rows, ours_params = our_rows(bench, settings)
    als_row = implicit_als_row(bench, settings, args.threads)
    als_row.counterpart = "ALS (ours)"
    bpr_row = implicit_bpr_row(bench, settings, args.threads)
    bpr_row.counterpart = "BPR (ours)"
    warp = lightfm_row(bench, "warp", settings.warp_epochs, lightfm_threads)
    warp.counterpart = "BPR (ours)"
    lbpr = lightfm_row(bench, "bpr", settings.lightfm_bpr_epochs, lightfm_threads)
    lbpr.counterpart = "BPR (ours)"
    knn = knn_row(bench, settings, args.threads)
    knn.counterpart = "ALS (ours)"
    rows += [als_row, bpr_row, warp, lbpr, knn]

    same_work = same_work_als(bench, settings, args.threads, als_row.params["regularization"], als_row.params["alpha"])
    ours_bpr = next(row for row in rows if row.name == "BPR (ours)")
    bpr_study = bpr_time_to_quality(bench, settings, ours_params["bpr"], ours_bpr, bpr_row)

    meta: dict[str, Any] = {
        "date": now_utc(),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions(("torch", "numpy", "scipy", "implicit", "lightfm", "threadpoolctl")),
        "git": git_revision(),
        "threads": {"implicit": args.threads, "lightfm": lightfm_threads, "torch": torch.get_num_threads()},
        "data": str(args.data),
        "split": shape,
        "anchor_split": ANCHOR_SPLIT,
        "settings": dataclasses.asdict(settings),
        "load_start": load_start,
        "load_end": load_average(),
    }
    markdown = render(rows, same_work, bpr_study, meta)
    meta["wall_s"] = time.perf_counter() - started
    payload = {
        **meta,
        "rows": [row.to_json() for row in rows],
        "same_work_als": same_work,
        "bpr_time_to_quality": bpr_study,
    }
    md_path, json_path = write_results(args.out, "baselines-quick" if args.quick else "baselines", markdown, payload)
    print(markdown)
    log(f"wrote {md_path} and {json_path} ({meta['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
