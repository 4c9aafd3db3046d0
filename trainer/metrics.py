"""Ranking metrics over a whole top-K matrix at once (no per-user Python loop).

Conventions follow ../shared/notes/anchors.md so figures compare with the peers': binary relevance,
Recall@K = hits / min(K, |relevant|), NDCG@K with a log2 discount and the ideal DCG over min(K, |relevant|).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

FloatArray = npt.NDArray[np.float64]


def hit_matrix(
    top_items: npt.NDArray[np.integer[Any]], relevant: sp.csr_matrix, users: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """``hits[r, j]`` is true when ``top_items[r, j]`` is relevant for ``users[r]``.

    Pairs are encoded as ``user * n_items + item`` and looked up in the sorted relevant keys, which keeps the
    work vectorized; ``-1`` (padding for short lists) never hits.
    """
    users = np.asarray(users, dtype=np.int64)
    n_items = relevant.shape[1]
    rel = relevant.tocsr()
    rel_users = np.repeat(np.arange(rel.shape[0], dtype=np.int64), np.diff(rel.indptr))
    rel_keys = np.sort(rel_users * n_items + rel.indices.astype(np.int64))
    keys = users[:, None] * n_items + top_items.astype(np.int64)
    pos = np.searchsorted(rel_keys, keys)
    pos = np.minimum(pos, len(rel_keys) - 1) if len(rel_keys) else pos
    found = (rel_keys[pos] == keys) if len(rel_keys) else np.zeros(keys.shape, dtype=bool)
    return found & (top_items >= 0)


def _n_relevant(relevant: sp.csr_matrix, users: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return np.diff(relevant.tocsr().indptr)[users].astype(np.int64)


def recall_at_k(hits: npt.NDArray[np.bool_], n_relevant: npt.NDArray[np.int64], k: int) -> FloatArray:
    out: FloatArray = hits[:, :k].sum(axis=1) / np.maximum(np.minimum(k, n_relevant), 1)
    return out


def ndcg_at_k(hits: npt.NDArray[np.bool_], n_relevant: npt.NDArray[np.int64], k: int) -> FloatArray:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(k, n_relevant)]
    out: FloatArray = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return out


def map_at_k(hits: npt.NDArray[np.bool_], n_relevant: npt.NDArray[np.int64], k: int) -> FloatArray:
    h = hits[:, :k].astype(np.float64)
    precision = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)
    out: FloatArray = (precision * h).sum(axis=1) / np.maximum(np.minimum(k, n_relevant), 1)
    return out


def coverage_at_k(top_items: npt.NDArray[np.integer[Any]], n_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-K list."""
    shown = top_items[:, :k]
    return float(np.unique(shown[shown >= 0]).size / n_items)


def mean_popularity_at_k(top_items: npt.NDArray[np.integer[Any]], item_popularity: FloatArray, k: int) -> float:
    """Mean training popularity (share of users who played the item) of what gets recommended."""
    shown = top_items[:, :k]
    return float(item_popularity[shown[shown >= 0]].mean()) if (shown >= 0).any() else 0.0


def ranking_metrics(
    top_items: npt.NDArray[np.integer[Any]],
    users: npt.ArrayLike,
    relevant: sp.csr_matrix,
    item_popularity: FloatArray,
    ks: tuple[int, ...] = (10, 20),
) -> dict[str, float]:
    """Every metric at every K, averaged over ``users`` (rows of ``top_items``)."""
    users = np.asarray(users, dtype=np.int64)
    hits = hit_matrix(top_items, relevant, users)
    n_rel = _n_relevant(relevant, users)
    out: dict[str, float] = {}
    for k in ks:
        out[f"ndcg@{k}"] = float(ndcg_at_k(hits, n_rel, k).mean())
        out[f"recall@{k}"] = float(recall_at_k(hits, n_rel, k).mean())
        out[f"map@{k}"] = float(map_at_k(hits, n_rel, k).mean())
        out[f"coverage@{k}"] = coverage_at_k(top_items, relevant.shape[1], k)
        out[f"mean_popularity@{k}"] = mean_popularity_at_k(top_items, item_popularity, k)
    return out
