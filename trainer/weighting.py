"""Confidence weighting of raw play counts (Hu, Koren & Volinsky 2008, and the BM25 variant of implicit).

Play counts span six orders of magnitude; the models see a transformed confidence instead. BM25 depends on
statistics of the training matrix (item IDF, mean listening per user); they are returned as
:class:`CorpusStats` so that a listener folded in later is weighted exactly as at training time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.core.errors import ConfigError
from serving.weights import bm25_values


class Weighting(StrEnum):
    raw = "raw"
    log1p = "log1p"
    bm25 = "bm25"


def weighting(value: Weighting | str) -> Weighting:
    try:
        return Weighting(value)
    except ValueError:
        choices = ", ".join(w.value for w in Weighting)
        raise ConfigError(f"unknown weighting {value!r}; choose one of: {choices}") from None


@dataclass(frozen=True)
class CorpusStats:
    item_idf: npt.NDArray[np.float64]
    mean_user_total: float

    @classmethod
    def of(cls, matrix: sp.csr_matrix) -> CorpusStats:
        n_users = max(matrix.shape[0], 1)
        item_users = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
        totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
        mean_total = float(totals.mean()) if totals.size and totals.mean() > 0 else 1.0
        return cls(item_idf=np.log(n_users) - np.log1p(item_users), mean_user_total=mean_total)


def confidence(
    matrix: sp.csr_matrix,
    scheme: Weighting | str,
    *,
    k1: float = 1.2,
    b: float = 0.75,
    stats: CorpusStats | None = None,
) -> sp.csr_matrix:
    """Users x items confidence matrix with the same sparsity as ``matrix`` (zeros dropped).

    ``bm25`` down-weights items many users played (IDF) and normalises by how much each user plays, the way
    implicit's ``bm25_weight`` does, so heavy listeners and blockbuster artists do not dominate the fit.
    ``stats`` defaults to those of ``matrix`` itself.
    """
    scheme = weighting(scheme)
    out = matrix.astype(np.float32, copy=True)
    if scheme is Weighting.raw:
        return out
    if scheme is Weighting.log1p:
        out.data = np.log1p(out.data)
        return out
    stats = stats or CorpusStats.of(matrix)
    row_totals = np.asarray(out.sum(axis=1), dtype=np.float64).ravel()
    out.data = bm25_values(
        out.data, np.repeat(row_totals, np.diff(out.indptr)), stats.item_idf[out.indices], stats.mean_user_total,
        k1=k1, b=b,
    )  # fmt: skip
    out.eliminate_zeros()
    return out
