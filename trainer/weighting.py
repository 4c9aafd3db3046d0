"""Confidence weighting of raw play counts (Hu, Koren & Volinsky 2008, and the BM25 variant of implicit).

Play counts span six orders of magnitude; the models see a transformed confidence instead.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import scipy.sparse as sp


class Weighting(StrEnum):
    raw = "raw"
    log1p = "log1p"
    bm25 = "bm25"


def confidence(
    matrix: sp.csr_matrix, scheme: Weighting | str, *, k1: float = 1.2, b: float = 0.75
) -> sp.csr_matrix:
    """Users x items confidence matrix with the same sparsity as ``matrix``.

    ``bm25`` down-weights items many users played (IDF) and normalises by how much each user plays, the way
    implicit's ``bm25_weight`` does, so heavy listeners and blockbuster artists do not dominate the fit.
    """
    scheme = Weighting(scheme)
    out = matrix.astype(np.float32, copy=True)
    if scheme is Weighting.raw:
        return out
    if scheme is Weighting.log1p:
        out.data = np.log1p(out.data)
        return out
    n_users = matrix.shape[0]
    item_users = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
    idf = np.log(n_users) - np.log1p(item_users)
    row_sums = np.asarray(out.sum(axis=1)).ravel()
    avg = row_sums.mean() if row_sums.size else 1.0
    row_len = np.repeat(row_sums, np.diff(out.indptr))
    length_norm = (1.0 - b) + b * row_len / avg
    data = out.data.astype(np.float64)
    out.data = (data * (k1 + 1.0) / (k1 * length_norm + data) * idf[out.indices]).astype(np.float32)
    out.data = np.maximum(out.data, 0.0)
    out.eliminate_zeros()
    return out
