"""The catalog the serving benchmarks share: a synthetic world, ALS fitted for a couple of iterations (or random
factors: the shapes matter, not the quality), published through the real path, and real requests drawn from what
was published (perf_analyzer input data for the ensembles and for the scorers alone)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from benchmarks.harness.running import output_to, say

__all__ = ["LOOKUP", "Catalog", "Requests", "build_and_publish", "catalog_args", "sample_requests", "write_input_data"]

#: the model whose published files hold the users, their histories and their vectors
LOOKUP = "recsys_lookup"


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


def catalog_args(users: int, items: int, *, sessions: float = 5.0, session_length: float = 10.0) -> argparse.Namespace:
    """What :func:`build_and_publish` reads, for benchmarks without catalog options of their own."""
    return argparse.Namespace(users=users, items=items, sessions=sessions, session_length=session_length, factors=64,
                              als_iterations=2, random_factors=False, seed=0)  # fmt: skip
