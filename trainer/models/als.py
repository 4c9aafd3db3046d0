"""Implicit ALS (Hu, Koren & Volinsky, ICDM 2008) in PyTorch, on CPU or CUDA.

Each half-sweep solves, for every user u (then every item), the ridge system
``(Y^T Y + Y^T (C_u - I) Y + reg I) x_u = Y^T C_u p_u`` with confidence ``c = 1 + alpha * w`` on
observed pairs and ``p = 1`` there. ``solver="cg"`` runs a few warm-started conjugate-gradient steps for
all rows at once (Takacs et al. 2011, the default of implicit); ``solver="cholesky"`` solves each system
exactly. Both touch only the nonzeros plus one shared ``Y^T Y``: a sweep costs O(nnz * D + n * D^2).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from trainer.data.interactions import Interactions
from trainer.errors import ConfigError
from trainer.models.base import FactorModel
from trainer.models.base import Params as _Params
from trainer.progress import track
from trainer.weighting import CorpusStats, Weighting, confidence

# Rows are solved in chunks holding at most this many nonzeros, which bounds the gathered memory.
_CHUNK_NNZ = 1 << 20


@dataclass(frozen=True)
class ALSParams(_Params):
    factors: int = 64
    # Defaults: `recsys tune` (40 TPE trials) on a validation split of HetRec's training part, rounded.
    iterations: int = 15
    regularization: float = 40.0
    alpha: float = 0.8
    weighting: str = Weighting.bm25.value
    bm25_k1: float = 1.2
    bm25_b: float = 0.75
    solver: str = "cg"
    cg_steps: int = 3
    init_scale: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.factors < 1 or self.iterations < 1 or self.cg_steps < 1:
            raise ConfigError("ALS factors, iterations and cg_steps must be >= 1")
        if self.regularization < 0 or self.alpha < 0:
            raise ConfigError("ALS regularization and alpha must be >= 0")
        if self.solver not in ("cg", "cholesky"):
            raise ConfigError(f"ALS solver must be 'cg' or 'cholesky', got {self.solver!r}")
        Weighting(self.weighting)


@dataclass(frozen=True)
class _Rows:
    """A CSR matrix of confidences as device tensors: what one half-sweep iterates over."""

    indptr: torch.Tensor
    cols: torch.Tensor
    conf: torch.Tensor  # c = 1 + alpha * w

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix, alpha: float, device: torch.device) -> _Rows:
        return cls(
            indptr=torch.from_numpy(matrix.indptr.astype(np.int64)).to(device),
            cols=torch.from_numpy(matrix.indices.astype(np.int64)).to(device),
            conf=torch.from_numpy(1.0 + alpha * matrix.data.astype(np.float32)).to(device),
        )

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def chunks(self) -> list[tuple[int, int]]:
        """Row ranges whose nonzeros fit in one chunk (a single long row gets a chunk of its own)."""
        indptr = self.indptr.cpu().numpy()
        bounds = [0]
        while bounds[-1] < self.n_rows:
            start = bounds[-1]
            stop = int(np.searchsorted(indptr, indptr[start] + _CHUNK_NNZ, side="right")) - 1
            bounds.append(min(max(stop, start + 1), self.n_rows))
        return list(itertools.pairwise(bounds))


class ALS(FactorModel):
    name = "als"
    params_type = ALSParams
    params: ALSParams

    def __init__(self, params: ALSParams | None = None, *, device: str | torch.device = "cpu") -> None:
        super().__init__(params, device=device)
        self.corpus = CorpusStats(item_idf=np.zeros(0), mean_user_total=1.0)

    def _state(self) -> dict[str, npt.NDArray[Any]]:
        state = super()._state()
        state["item_idf"] = self.corpus.item_idf
        state["mean_user_total"] = np.array([self.corpus.mean_user_total])
        return state

    def _restore(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        super()._restore(arrays)
        self.corpus = CorpusStats(
            item_idf=arrays["item_idf"].astype(np.float64), mean_user_total=float(arrays["mean_user_total"][0])
        )

    def fit(self, train: Interactions, *, show_progress: bool = False) -> Self:
        p = self.params
        plays = train.to_csr()
        self.corpus = CorpusStats.of(plays)
        weights = confidence(plays, p.weighting, k1=p.bm25_k1, b=p.bm25_b, stats=self.corpus)
        users = _Rows.from_csr(weights, p.alpha, self.device)
        items = _Rows.from_csr(weights.T.tocsr(), p.alpha, self.device)
        gen = torch.Generator(device="cpu").manual_seed(p.seed)
        self.user_factors = (torch.rand(train.n_users, p.factors, generator=gen) * p.init_scale).to(self.device)
        self.item_factors = (torch.rand(train.n_items, p.factors, generator=gen) * p.init_scale).to(self.device)
        self.item_bias = None
        self.n_users, self.n_items = train.n_users, train.n_items
        for _ in track(range(p.iterations), "ALS", total=p.iterations, enabled=show_progress):
            self.user_factors = self._solve(users, self.item_factors, self.user_factors)
            self.item_factors = self._solve(items, self.user_factors, self.item_factors)
        return self

    def _solve(self, rows: _Rows, Y: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """New factors for every row given the fixed other side ``Y``."""
        gram = Y.T @ Y + self.params.regularization * torch.eye(Y.shape[1], device=Y.device, dtype=Y.dtype)
        out = torch.empty_like(X)
        for start, stop in rows.chunks():
            lo, hi = int(rows.indptr[start]), int(rows.indptr[stop])
            local_rows = torch.repeat_interleave(
                torch.arange(stop - start, device=Y.device), torch.diff(rows.indptr[start : stop + 1])
            )
            Yg = Y[rows.cols[lo:hi]]
            conf = rows.conf[lo:hi]
            if self.params.solver == "cg":
                out[start:stop] = _cg(gram, Yg, conf, local_rows, X[start:stop], self.params.cg_steps)
            else:
                out[start:stop] = _cholesky(gram, Yg, conf, local_rows, stop - start)
        return out

    def fold_in(self, items: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """Exact user vector for a listener who played ``items`` (raw play counts ``weights``, default 1 each).

        This is the closed-form user step of ALS against the fixed item factors, with the same confidence
        transform (and, for BM25, the same training-corpus statistics) as the fit: a new listener gets a
        personal vector after a few plays without retraining. Repeated items are summed.
        """
        self._check_fitted()
        idx = np.asarray(items, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_items):
            raise ConfigError(f"fold-in item index out of range 0..{self.n_items - 1}")
        raw = np.ones(len(idx), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        if raw.shape != idx.shape or (raw < 0).any():
            raise ConfigError("fold-in weights must be non-negative, one per item")
        p = self.params
        row = sp.csr_matrix((raw, (np.zeros_like(idx), idx)), shape=(1, self.n_items))
        row.sum_duplicates()
        row = confidence(row, p.weighting, k1=p.bm25_k1, b=p.bm25_b, stats=self.corpus)
        idx = row.indices.astype(np.int64)
        w = row.data.astype(np.float32)
        Y = self.item_factors
        gram = Y.T @ Y + self.params.regularization * torch.eye(Y.shape[1], device=Y.device, dtype=Y.dtype)
        Yg = Y[torch.from_numpy(idx).to(Y.device)]
        conf = torch.from_numpy(1.0 + self.params.alpha * w).to(Y.device)
        rows = torch.zeros(len(idx), dtype=torch.int64, device=Y.device)
        return _cholesky(gram, Yg, conf, rows, 1)[0].cpu().numpy()


def _apply(
    gram: torch.Tensor, Yg: torch.Tensor, conf: torch.Tensor, rows: torch.Tensor, P: torch.Tensor
) -> torch.Tensor:
    """``A P`` for every row's system at once, without forming any per-row matrix."""
    dots = (Yg * P[rows]).sum(dim=1) * (conf - 1.0)
    return (P @ gram).index_add_(0, rows, Yg * dots[:, None])


def _cg(
    gram: torch.Tensor, Yg: torch.Tensor, conf: torch.Tensor, rows: torch.Tensor, X0: torch.Tensor, steps: int
) -> torch.Tensor:
    b = torch.zeros_like(X0).index_add_(0, rows, Yg * conf[:, None])
    X = X0.clone()
    r = b - _apply(gram, Yg, conf, rows, X)
    p = r.clone()
    rs_old = (r * r).sum(dim=1)
    for _ in range(steps):
        Ap = _apply(gram, Yg, conf, rows, p)
        denom = (p * Ap).sum(dim=1)
        step = torch.where(denom > 0, rs_old / denom.clamp_min(1e-30), torch.zeros_like(denom))
        X += step[:, None] * p
        r -= step[:, None] * Ap
        rs_new = (r * r).sum(dim=1)
        beta = torch.where(rs_old > 0, rs_new / rs_old.clamp_min(1e-30), torch.zeros_like(rs_new))
        p = r + beta[:, None] * p
        rs_old = rs_new
    return X


def _cholesky(
    gram: torch.Tensor, Yg: torch.Tensor, conf: torch.Tensor, rows: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """Exact solves; rows are bucketed by length and padded: one batched matmul + Cholesky per bucket."""
    D = gram.shape[0]
    dev = gram.device
    lengths = torch.bincount(rows, minlength=n_rows)
    starts = torch.cumsum(lengths, 0) - lengths
    pos = torch.arange(len(rows), device=dev) - starts[rows]
    b = torch.zeros(n_rows, D, device=dev, dtype=gram.dtype).index_add_(0, rows, Yg * conf[:, None])
    out = torch.empty(n_rows, D, device=dev, dtype=gram.dtype)
    order = torch.argsort(lengths)
    sorted_len = lengths[order].cpu().numpy()
    lo = 0
    while lo < n_rows:
        width = max(int(sorted_len[min(lo + 1, n_rows) - 1]), 1)
        # Grow the bucket while the padded block stays under ~2^20 entries.
        hi = lo + 1
        while hi < n_rows and (hi + 1 - lo) * max(int(sorted_len[hi]), 1) <= (1 << 20):
            hi += 1
        width = max(int(sorted_len[hi - 1]), 1)
        bucket = order[lo:hi]
        slot = torch.full((n_rows,), -1, dtype=torch.int64, device=dev)
        slot[bucket] = torch.arange(hi - lo, device=dev)
        member = slot[rows] >= 0
        Yp = torch.zeros(hi - lo, width, D, device=dev, dtype=gram.dtype)
        wp = torch.zeros(hi - lo, width, device=dev, dtype=gram.dtype)
        Yp[slot[rows][member], pos[member]] = Yg[member]
        wp[slot[rows][member], pos[member]] = conf[member] - 1.0
        A = gram + torch.bmm(Yp.transpose(1, 2) * wp[:, None, :], Yp)
        L = torch.linalg.cholesky(A)
        out[bucket] = torch.cholesky_solve(b[bucket][:, :, None], L)[:, :, 0]
        lo = hi
    return out
