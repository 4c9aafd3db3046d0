"""Export a factor model's scorer to TorchScript and ONNX, and prove both agree with the trainer.

The exported graph is the scoring step of the served pipeline: user index -> scores against every item ->
already-heard items masked -> top-k. Unknown users (index -1) get the popularity fallback scores from the
same graph. Both formats are traced from one ``nn.Module`` holding the trained weights, so they cannot drift
apart; :func:`check_parity` verifies it on a sample of users before anything is published.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from recsys.core.errors import ConfigError
from serving.contract import EXCLUDE, FOLD_IN_FILE, TOP_K, USER_VECTOR, USERS_FILE
from serving.lookup import padded_rows
from trainer.exporting import (
    ExportError,
    ParityReport,
    compare,
    ensure_parity,
    export_both,
    masked_top_k,
    run_exports,
)
from trainer.models.base import FactorModel, users_per_batch

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "FactorScorer", "ParityReport", "build_scorer", "check_parity", "export_all", "user_table"]


class FactorScorer(torch.nn.Module):
    """``scores = user_vector . V^T + b``, masked, then top-k: one matrix product and one top-k pass per batch.

    The user side is an input, not a table inside the module: the lookup step sends each user's row of
    :func:`user_table` (a trained vector, a vector folded in live from the listener's latest plays, or the fallback
    pseudo-user), so a new listener needs no new export. Layout:

    * the factor dimension has one extra column: the items hold ``fallback - bias`` there, users hold 0, and the
      pseudo-user for unknown ids is ``(0, ..., 0, 1)``, so its scores are the fallback scores with no ``where``;
    * column ``n_items`` is a sink whose bias is ``-inf``: padding in EXCLUDE points there, so the mask is an
      in-place scatter on the product itself (no concatenated copy), and the sink is never recommended.

    The items are held once, transposed (``[D + 1, n_items + 1]``): the layout is filled in place rather than
    built row-major and transposed, which held the 2.6 GB of a 10M-item catalogue twice.
    """

    def __init__(
        self,
        item_factors: torch.Tensor,
        item_bias: torch.Tensor | None,
        fallback_scores: torch.Tensor,
    ) -> None:
        super().__init__()
        n_items, dim = item_factors.shape
        bias = torch.zeros(n_items) if item_bias is None else item_bias.detach().float().cpu()
        items_t = torch.zeros(dim + 1, n_items + 1)
        items_t[:dim, :n_items] = item_factors.detach().float().cpu().T
        items_t[dim, :n_items] = fallback_scores.detach().float().cpu() - bias
        # Plain tensor attributes (not buffers): TorchScript keeps them, and their types stay visible to mypy.
        self.items_t = items_t
        self.bias = torch.cat([bias, torch.tensor([-math.inf])]).contiguous()
        self.n_items = int(n_items)

    def forward(
        self, user_vector: torch.Tensor, exclude: torch.Tensor, top_k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.addmm(self.bias, user_vector, self.items_t)
        columns = torch.where(exclude >= 0, exclude, torch.full_like(exclude, self.n_items))
        return masked_top_k(scores, columns, top_k, self.n_items)


def user_table(model: FactorModel) -> npt.NDArray[np.float32]:
    """The rows the lookup serves: ``[n_users + 1, D + 1]``, each user's factors then 0; the last row is the
    fallback pseudo-user ``(0, ..., 0, 1)`` (see :class:`FactorScorer`)."""
    users = model.factors()[0]
    table = np.zeros((users.shape[0] + 1, users.shape[1] + 1), dtype=np.float32)
    table[:-1, :-1] = users
    table[-1, -1] = 1.0
    return table


def user_rows(model: FactorModel, users: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.float32]:
    """``user_table(model)[users]`` for known users, without building the whole table."""
    factors = model.factors()[0]
    rows = np.zeros((len(users), factors.shape[1] + 1), dtype=np.float32)
    rows[:, :-1] = factors[users]
    return rows


#: Rows of item factors per step of the fold-in Gram matrix (64 MB of float64 at 64 factors).
GRAM_ROWS = 1 << 17


def gram(items: npt.NDArray[np.floating[Any]], *, rows: int = GRAM_ROWS) -> npt.NDArray[np.float64]:
    """``items.T @ items`` in float64, ``rows`` items at a time: no float64 copy of the whole catalogue (5 GB at
    10M items x 64 factors)."""
    out = np.zeros((items.shape[1], items.shape[1]), dtype=np.float64)
    for start in range(0, items.shape[0], rows):
        block = items[start : start + rows].astype(np.float64)
        out += block.T @ block
    return out


def fold_in_arrays(model: FactorModel) -> dict[str, npt.NDArray[Any]] | None:
    """What the lookup needs to fold a listener in live (the ALS closed-form user step), or ``None`` when the
    model has no closed-form fold-in (BPR)."""
    params = getattr(model, "params", None)
    if model.name != "als" or params is None:
        return None
    corpus = getattr(model, "corpus", None)
    items = np.ascontiguousarray(model.factors()[1], dtype=np.float32)  # the model's own array: no copy
    arrays: dict[str, npt.NDArray[Any]] = {
        "item_factors": items,
        "gram": gram(items) + params.regularization * np.eye(items.shape[1]),
        "alpha": np.array(params.alpha, dtype=np.float64),
        "weighting": np.array(str(params.weighting)),
        "bm25_k1": np.array(params.bm25_k1, dtype=np.float64),
        "bm25_b": np.array(params.bm25_b, dtype=np.float64),
    }
    if corpus is not None:
        arrays["item_idf"] = corpus.item_idf.astype(np.float64)
        arrays["mean_user_total"] = np.array(corpus.mean_user_total, dtype=np.float64)
    return arrays


def build_scorer(model: FactorModel, fallback_scores: npt.NDArray[np.floating[Any]]) -> FactorScorer:
    """The scorer of a fitted model; refuses NaN/inf weights and says which array holds them."""
    users, items, bias = model.factors()
    arrays = {"user_factors": users, "item_factors": items, "fallback_scores": np.asarray(fallback_scores)}
    if bias is not None:
        arrays["item_bias"] = bias
    for name, array in arrays.items():
        bad = non_finite(array)
        if bad:
            raise ExportError(f"{model.name} {name} has {bad} NaN/inf value(s); refusing to export")
    if len(fallback_scores) != items.shape[0]:
        raise ExportError(f"fallback has {len(fallback_scores)} scores for {items.shape[0]} items")
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ExportError(
            f"{model.name} user_factors {users.shape} and item_factors {items.shape} do not share a factor dimension"
        )
    if items.shape[0] != model.n_items or users.shape[0] != model.n_users:
        raise ExportError(
            f"{model.name} has {model.n_users} users x {model.n_items} items but user_factors {users.shape} and "
            f"item_factors {items.shape}"
        )
    if bias is not None and bias.shape != (items.shape[0],):
        raise ExportError(f"{model.name} item_bias {bias.shape} does not match item_factors {items.shape}")
    return FactorScorer(  # buffers only, no training-mode behaviour; eval() keeps the exporters quiet
        torch.from_numpy(items),
        None if bias is None else torch.from_numpy(bias),
        torch.from_numpy(np.asarray(fallback_scores, dtype=np.float32)),
    ).eval()


def non_finite(array: npt.NDArray[Any], *, rows: int = 1 << 16) -> int:
    """How many NaN/inf values ``array`` holds, counted ``rows`` rows at a time (no mask as large as the array)."""
    whole = np.atleast_1d(array)
    blocks = (whole[start : start + rows] for start in range(0, len(whole), rows))
    return sum(int(block.size - np.count_nonzero(np.isfinite(block))) for block in blocks)


def padded_exclusions(history: sp.csr_matrix, users: npt.NDArray[np.integer[Any]], width: int) -> npt.NDArray[np.int64]:
    """Rows of ``history`` as item indices padded with -1 to ``width`` (unknown users, -1, get none).

    The same padding the served lookup step applies (``serving.lookup.padded_rows``).
    """
    try:
        return padded_rows(history.indptr, history.indices, users, width)
    except ValueError as exc:
        raise ConfigError(f"exclusion list too wide: {exc}") from exc


def example_inputs(width: int, dim: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(batch, dim + 1, dtype=torch.float32),
        torch.full((batch, max(width, 1)), -1, dtype=torch.int64),
        torch.full((batch, 1), 10, dtype=torch.int64),
    )


def check_parity(
    model: FactorModel,
    history: sp.csr_matrix,
    torchscript_path: Path,
    onnx_path: Path,
    width: int,
    *,
    k: int = 10,
    sample: int = 200,
    seed: int = 0,
) -> ParityReport:
    """Both exports against the trainer's own ``recommend`` on ``sample`` users (:func:`trainer.exporting.compare`).

    Every side scores :func:`users_per_batch` users at a time, so the check holds ``batch x n_items`` scores, not
    ``sample x n_items`` (8 GB each at 10M items).
    """
    k = min(k, model.n_items)
    rng = np.random.default_rng(seed)
    users = np.sort(rng.choice(model.n_users, size=min(sample, model.n_users), replace=False))
    batch = users_per_batch(model.n_items + 1)  # the exported graph scores the sink column too
    began = time.perf_counter()
    ref_items, ref_scores = model.recommend(users, k, exclude=history, batch_size=batch)
    logger.info(
        "the trainer's top-%d of %d users in %.1f s (batches of %d)", k, len(users), time.perf_counter() - began, batch
    )
    inputs: dict[str, npt.NDArray[Any]] = {
        USER_VECTOR: user_rows(model, users),
        EXCLUDE: padded_exclusions(history, users, width),
        TOP_K: np.full((len(users), 1), k, dtype=np.int64),
    }

    def score_of(items: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        out = np.empty(items.shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(users), batch):
                full = model.score(users[start : start + batch]).detach().cpu().numpy()
                picked = np.take_along_axis(full, np.maximum(items[start : start + batch], 0), axis=1)
                out[start : start + batch] = picked
        return out

    exports = run_exports(torchscript_path, onnx_path, inputs, rows=batch)
    return compare((ref_scores, ref_items), exports, score_of=score_of)


def export_all(
    model: FactorModel,
    history: sp.csr_matrix,
    directory: Path,
    *,
    fallback_scores: npt.NDArray[np.floating[Any]] | None = None,
) -> ParityReport:
    """Writes ``model.pt``, ``model.onnx``, the lookup's user table and (ALS) its fold-in data into ``directory``;
    refuses (ExportError) unless parity holds."""
    if not isinstance(model, FactorModel):
        raise ExportError(f"{model.name} is not a factor model; only BPR and ALS export to the factor scorer")
    width = max_history(history)
    if fallback_scores is None:
        fallback_scores = np.bincount(history.indices, minlength=model.n_items).astype(np.float32)
    scorer = build_scorer(model, fallback_scores)
    batch, history_dim = torch.export.Dim("batch", min=1), torch.export.Dim("history", min=1)
    ts_path, onnx_path = export_both(
        scorer,
        directory,
        example_inputs(width, scorer.items_t.shape[0] - 1),
        (USER_VECTOR, EXCLUDE, TOP_K),
        {"user_vector": {0: batch}, "exclude": {0: batch, 1: history_dim}, "top_k": {0: batch}},
    )
    # Ours goes; onnxscript's global rewriter rules still hold the last exported graph, and the items' tensor in it,
    # through the parity check (+2.6 GB at 10M items; benchmarks/results/publish_memory.md).
    del scorer
    report = ensure_parity(check_parity(model, history, ts_path, onnx_path, width), "factor scorer")
    np.save(directory / USERS_FILE, user_table(model))
    fold_in = fold_in_arrays(model)
    if fold_in is not None:
        np.savez(directory / FOLD_IN_FILE, **fold_in)
    return report


def max_history(history: sp.csr_matrix) -> int:
    return int(np.diff(history.indptr).max()) if history.shape[0] else 1
