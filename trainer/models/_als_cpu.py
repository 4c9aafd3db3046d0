"""The CPU kernel of ALS's conjugate-gradient solve, compiled with numba.

torch's sparse kernels make every CG product two passes over the nonzeros (a sampled dense-dense product for
``y_i . p``, then a sparse-dense product for the sum), each gathering the item vectors again. Here one pass per
row computes both from a vector already in cache, rows in parallel: the same work implicit's Cython does, so
the CPU fit is no slower than implicit's. CUDA keeps the torch path (cuSPARSE), which is already far ahead.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)  # type: ignore[untyped-decorator]
def cg_solve(
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    conf: F32,
    Y: F32,
    gram: F32,
    X: F32,
    steps: int,
) -> None:
    """Runs ``steps`` warm-started CG steps on every row's system, updating ``X`` in place.

    Row u solves ``(G + sum_i (c_ui - 1) y_i y_i^T) x = sum_i c_ui y_i`` with ``G = Y^T Y + reg I``.
    """
    n_rows, dim = X.shape
    for u in numba.prange(n_rows):
        x = X[u]
        r = np.zeros(dim, dtype=np.float32)
        p = np.empty(dim, dtype=np.float32)
        ap = np.empty(dim, dtype=np.float32)
        # r = b - A x, with b folded into the same pass over the row's items.
        for a in range(dim):
            acc = np.float32(0.0)
            for b in range(dim):
                acc += gram[a, b] * x[b]
            r[a] = -acc
        for j in range(indptr[u], indptr[u + 1]):
            y = Y[indices[j]]
            c = conf[j]
            d = np.float32(0.0)
            for a in range(dim):
                d += y[a] * x[a]
            w = c - (c - np.float32(1.0)) * d
            for a in range(dim):
                r[a] += w * y[a]
        rs_old = np.float32(0.0)
        for a in range(dim):
            p[a] = r[a]
            rs_old += r[a] * r[a]
        for _ in range(steps):
            if rs_old < 1e-20:
                break
            for a in range(dim):
                acc = np.float32(0.0)
                for b in range(dim):
                    acc += gram[a, b] * p[b]
                ap[a] = acc
            for j in range(indptr[u], indptr[u + 1]):
                y = Y[indices[j]]
                d = np.float32(0.0)
                for a in range(dim):
                    d += y[a] * p[a]
                d *= conf[j] - np.float32(1.0)
                for a in range(dim):
                    ap[a] += d * y[a]
            pap = np.float32(0.0)
            for a in range(dim):
                pap += p[a] * ap[a]
            if pap <= 0:
                break
            alpha = rs_old / pap
            rs_new = np.float32(0.0)
            for a in range(dim):
                x[a] += alpha * p[a]
                r[a] -= alpha * ap[a]
                rs_new += r[a] * r[a]
            beta = rs_new / rs_old
            for a in range(dim):
                p[a] = r[a] + beta * p[a]
            rs_old = rs_new
