"""Implicit ALS (Hu, Koren & Volinsky, ICDM 2008) in PyTorch, on CPU or CUDA.

Each half-sweep solves, for every user u (then every item), the ridge system
``(Y^T Y + Y^T (C_u - I) Y + reg I) x_u = Y^T C_u p_u`` with confidence ``c = 1 + alpha * w`` on
observed pairs and ``p = 1`` there. ``solver="cg"`` runs a few warm-started conjugate-gradient steps for
all rows at once (Takacs et al. 2011, the default of implicit); ``solver="cholesky"`` solves each system
exactly. Both touch only the nonzeros plus one shared ``Y^T Y``: a sweep costs O(nnz * D + n * D^2).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from recsys.core.errors import ConfigError
from trainer.data.interactions import Interactions
from trainer.models._als_cpu import cg_solve
from trainer.models.base import SEED, Bound, FactorModel, InitialFactors
from trainer.models.base import Params as _Params
from trainer.progress import track
from trainer.weighting import CorpusStats, Weighting, confidence, weighting


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

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "factors": Bound(1, 4096),
        "iterations": Bound(1, 1000),
        "regularization": Bound(0, 1e6),
        "alpha": Bound(0, 1e4),
        "bm25_k1": Bound(0, 100),
        "bm25_b": Bound(0, 1),
        "cg_steps": Bound(1, 100),
        "init_scale": Bound(0, 10, low_open=True),
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.solver not in ("cg", "cholesky"):
            raise ConfigError(f"ALS solver must be 'cg' or 'cholesky', got {self.solver!r}")
        weighting(self.weighting)


@dataclass(frozen=True)
class _DeviceCsr:
    """A confidence matrix as torch CSR tensors, for the torch (CUDA) CG path only."""

    conf: torch.Tensor  # sparse CSR, values c
    weight: torch.Tensor  # dense values c - 1, in CSR order
    scratch: torch.Tensor  # sparse CSR with the same pattern, rewritten in place by every product

    @classmethod
    def of(cls, matrix: sp.csr_matrix, conf_values: npt.NDArray[np.float32], device: torch.device) -> _DeviceCsr:
        crow = torch.from_numpy(matrix.indptr.astype(np.int64)).to(device)
        col = torch.from_numpy(matrix.indices.astype(np.int64)).to(device)
        c = torch.from_numpy(conf_values).to(device)
        with warnings.catch_warnings():
            # torch flags its CSR layout as beta; the kernels used here (SpMM, SDDMM) are long-standing.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            conf = torch.sparse_csr_tensor(crow, col, c, size=matrix.shape, check_invariants=False)
            scratch = torch.sparse_csr_tensor(crow, col, torch.zeros_like(c), size=matrix.shape, check_invariants=False)
        return cls(conf=conf, weight=c - 1.0, scratch=scratch)


@dataclass(frozen=True)
class _Side:
    """One half-sweep's confidence matrix, prepared once per fit for the solver that will use it: CSR on the host
    (numba CG), torch CSR tensors (CG on CUDA) or padded buckets (exact solves)."""

    matrix: sp.csr_matrix
    conf_values: npt.NDArray[np.float32]  # c = 1 + alpha * w, in CSR order
    device_csr: _DeviceCsr | None
    buckets: list[_Bucket] | None

    @classmethod
    def of(cls, matrix: sp.csr_matrix, alpha: float, device: torch.device, *, solver: str) -> _Side:
        conf_values = (1.0 + alpha * matrix.data.astype(np.float32)).astype(np.float32)
        torch_cg = solver == "cg" and device.type != "cpu"
        return cls(
            matrix=matrix,
            conf_values=conf_values,
            device_csr=_DeviceCsr.of(matrix, conf_values, device) if torch_cg else None,
            buckets=_buckets(matrix, conf_values, device) if solver == "cholesky" else None,
        )


# Rows are solved in buckets of similar length, padded to at most this many (row, nonzero) slots; this bounds
# the gathered factors at _BUCKET_SLOTS * D floats and keeps the padding waste under ~25%.
_BUCKET_SLOTS = 1 << 13
_BUCKET_GROWTH = 1.25


@dataclass(frozen=True)
class _Bucket:
    """Rows of similar length, padded: ``cols`` point at the zero row ``n_other`` where a row has ended."""

    rows: torch.Tensor  # (B,)
    cols: torch.Tensor  # (B, L)
    conf: torch.Tensor  # (B, L): c on nonzeros, 0 on padding
    conf_minus_one: torch.Tensor  # (B, L): c - 1 on nonzeros, 0 on padding


def _buckets(matrix: sp.csr_matrix, conf: npt.NDArray[np.float32], device: torch.device) -> list[_Bucket]:
    """Splits the rows of a confidence matrix (``conf`` = c per nonzero) into padded buckets of similar length."""
    indptr, indices = matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64)
    lengths = np.diff(indptr)
    order = np.argsort(lengths, kind="stable")
    sorted_len = lengths[order]
    n_other = matrix.shape[1]
    out: list[_Bucket] = []
    lo = 0
    while lo < len(order):
        limit = int(max(sorted_len[lo], 1) * _BUCKET_GROWTH) + 4
        hi = int(np.searchsorted(sorted_len, limit, side="right"))
        width = max(int(sorted_len[hi - 1]), 1)
        hi = min(hi, lo + max(1, _BUCKET_SLOTS // width))
        width = max(int(sorted_len[hi - 1]), 1)
        rows = order[lo:hi]
        pos = np.arange(width)[None, :]
        inside = pos < lengths[rows][:, None]
        flat = np.where(inside, indptr[rows][:, None] + pos, 0)
        cols = np.where(inside, indices[flat] if len(indices) else 0, n_other)
        c = np.where(inside, conf[flat] if len(conf) else 0.0, 0.0).astype(np.float32)
        out.append(
            _Bucket(
                rows=torch.from_numpy(rows).to(device),
                cols=torch.from_numpy(cols).to(device),
                conf=torch.from_numpy(c).to(device),
                conf_minus_one=torch.from_numpy(np.where(inside, c - 1.0, 0.0).astype(np.float32)).to(device),
            )
        )
        lo = hi
    return out


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

    def cold_factors(self, n_users: int, n_items: int) -> InitialFactors:
        p = self.params
        gen = torch.Generator(device="cpu").manual_seed(p.seed)
        users = torch.rand(n_users, p.factors, generator=gen) * p.init_scale
        items = torch.rand(n_items, p.factors, generator=gen) * p.init_scale
        return InitialFactors(users.numpy(), items.numpy())

    def fit(self, train: Interactions, *, show_progress: bool = False, initial: InitialFactors | None = None) -> Self:
        """Alternates exact (or CG) user and item solves; from ``initial``, the first user solve already fits the
        new plays to the known items, which is why a warm start needs only a few iterations."""
        p = self.params
        plays = train.to_csr()
        self.corpus = CorpusStats.of(plays)
        weights = confidence(plays, p.weighting, k1=p.bm25_k1, b=p.bm25_b, stats=self.corpus)
        users = _Side.of(weights, p.alpha, self.device, solver=p.solver)
        items = _Side.of(weights.T.tocsr(), p.alpha, self.device, solver=p.solver)
        start = initial if initial is not None else self.cold_factors(train.n_users, train.n_items)
        start.check(train.n_users, train.n_items, p.factors)
        self.user_factors = torch.from_numpy(np.array(start.user_factors, dtype=np.float32)).to(self.device)
        self.item_factors = torch.from_numpy(np.array(start.item_factors, dtype=np.float32)).to(self.device)
        del start  # copied above: a cold start's own draw would otherwise live through the fit (2.6 GB at 10M items)
        self.item_bias = None
        self.n_users, self.n_items = train.n_users, train.n_items
        for _ in track(range(p.iterations), "ALS", total=p.iterations, enabled=show_progress):
            self.user_factors = self._solve(users, self.item_factors, self.user_factors)
            self.item_factors = self._solve(items, self.user_factors, self.item_factors)
        return self

    def _solve(self, side: _Side, Y: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """New factors for every row given the fixed other side ``Y``."""
        gram = _gram(Y, self.params.regularization)
        if self.params.solver == "cg" and Y.device.type == "cpu":
            # In place: each row's CG reads only its own row of X (and Y), and X is this model's own copy, so a
            # second factor matrix is never needed (2.6 GB at 10M items x 64 factors).
            out = X
            m = side.matrix
            cg_solve(
                m.indptr.astype(np.int64, copy=False),
                m.indices,
                side.conf_values,
                Y.numpy(),
                gram.numpy(),
                out.numpy(),
                self.params.cg_steps,
            )
            return out
        if self.params.solver == "cg":
            assert side.device_csr is not None
            return _cg(gram, side.device_csr, Y, X, self.params.cg_steps)
        Y_ext = torch.cat([Y, torch.zeros(1, Y.shape[1], device=Y.device, dtype=Y.dtype)])
        out = torch.empty_like(X)
        assert side.buckets is not None
        for bucket in side.buckets:
            out[bucket.rows] = _exact(gram, Y_ext[bucket.cols], bucket)
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
        one_row = sp.csr_matrix((w, idx, [0, len(idx)]), shape=(1, self.n_items))
        bucket = _buckets(one_row, (1.0 + p.alpha * w).astype(np.float32), self.device)[0]
        Y = self.item_factors
        Y_ext = torch.cat([Y, torch.zeros(1, Y.shape[1], device=Y.device, dtype=Y.dtype)])
        return _exact(_gram(Y, p.regularization), Y_ext[bucket.cols], bucket)[0].cpu().numpy()


def _gram(Y: torch.Tensor, regularization: float) -> torch.Tensor:
    return Y.T @ Y + regularization * torch.eye(Y.shape[1], device=Y.device, dtype=Y.dtype)


def _apply(gram: torch.Tensor, side: _DeviceCsr, Y: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """``A P`` for all rows at once: ``P G + sum_i (c_i - 1) (y_i . p) y_i``.

    The per-pair dots are a sampled dense-dense product (SDDMM) on the sparsity pattern and the sum a sparse
    times dense product (SpMM): both run in the sparse kernels of torch (MKL on CPU, cuSPARSE on CUDA), two
    orders of magnitude faster on CPU than gathering ``Y`` per pair.
    """
    torch.sparse.sampled_addmm(side.scratch, P, Y.T, beta=0.0, out=side.scratch)
    side.scratch.values().mul_(side.weight)
    return torch.addmm(torch.sparse.mm(side.scratch, Y), P, gram)


def _cg(gram: torch.Tensor, side: _DeviceCsr, Y: torch.Tensor, X0: torch.Tensor, steps: int) -> torch.Tensor:
    """A few warm-started conjugate-gradient steps for every row's system at once (Takacs et al. 2011)."""
    X = X0.clone()
    r = torch.sparse.mm(side.conf, Y) - _apply(gram, side, Y, X)
    p = r.clone()
    rs_old = (r * r).sum(dim=1)
    for _ in range(steps):
        Ap = _apply(gram, side, Y, p)
        denom = (p * Ap).sum(dim=1)
        step = torch.where(denom > 0, rs_old / denom.clamp_min(1e-30), torch.zeros_like(denom))
        X += step[:, None] * p
        r -= step[:, None] * Ap
        rs_new = (r * r).sum(dim=1)
        beta = torch.where(rs_old > 0, rs_new / rs_old.clamp_min(1e-30), torch.zeros_like(rs_new))
        p = r + beta[:, None] * p
        rs_old = rs_new
    return X


def _exact(gram: torch.Tensor, Yp: torch.Tensor, bucket: _Bucket) -> torch.Tensor:
    """Exact solves of one bucket: one batched matmul builds every row's matrix, one batched Cholesky solves."""
    A = gram + torch.einsum("bld,bl,ble->bde", Yp, bucket.conf_minus_one, Yp)
    b = torch.einsum("bl,bld->bd", bucket.conf, Yp)
    L = torch.linalg.cholesky(A)
    return torch.cholesky_solve(b[:, :, None], L)[:, :, 0]
