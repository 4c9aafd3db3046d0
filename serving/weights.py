"""The confidence weights as plain numpy, on one user's (or many users') entries.

Dependency-free beyond numpy on purpose: training (``trainer.weighting``, on scipy matrices) and the served
live fold-in (:mod:`serving.fold_in`, inside a Triton python stub) compute the same numbers from this one
function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def bm25_values(
    plays: npt.ArrayLike,
    user_totals: npt.ArrayLike,
    item_idf: npt.ArrayLike,
    mean_user_total: float,
    *,
    k1: float = 1.2,
    b: float = 0.75,
) -> npt.NDArray[np.float32]:
    """BM25 weight of each entry: plays saturated by ``k1``, normalised by how much its user plays relative to the
    mean (``b``), times its item's IDF; never negative. Arrays align entry by entry."""
    data = np.asarray(plays, dtype=np.float64)
    length_norm = (1.0 - b) + b * np.asarray(user_totals, dtype=np.float64) / mean_user_total
    weighted = data * (k1 + 1.0) / (k1 * length_norm + data) * np.asarray(item_idf, dtype=np.float64)
    result: npt.NDArray[np.float32] = np.maximum(weighted, 0.0).astype(np.float32)
    return result


def weigh(
    plays: npt.NDArray[np.floating[Any]],
    scheme: str,
    *,
    item_idf: npt.NDArray[np.floating[Any]] | None = None,
    mean_user_total: float = 1.0,
    k1: float = 1.2,
    b: float = 0.75,
) -> npt.NDArray[np.float32]:
    """One user's plays (aligned with ``item_idf``, the IDF of those items) -> weights under ``scheme``."""
    if scheme == "raw":
        return np.asarray(plays, dtype=np.float32)
    if scheme == "log1p":
        return np.log1p(np.asarray(plays, dtype=np.float32))
    if scheme == "bm25":
        if item_idf is None:
            raise ValueError("bm25 needs the items' IDF")
        total = float(np.sum(plays))
        return bm25_values(plays, np.full(len(plays), total), item_idf, mean_user_total, k1=k1, b=b)
    raise ValueError(f"unknown weighting {scheme!r}")
