"""Session-based item-kNN, the strongest baseline of the GRU4Rec paper (Hidasi et al., ICLR 2016).

The next play is predicted from the current item alone: items are ranked by their similarity to it and every
item outside its ``n_sims`` nearest neighbours scores 0. The similarity is the official ``baselines.py``
``Cosine`` (``CoOccurence`` with ``alpha = 0.5``)::

    sim(i, j) = co(i, j) / ((supp(i) + lambda) ** alpha * (supp(j) + lambda) ** (1 - alpha)),   sim(i, i) = 0

where ``supp`` is an item's number of plays and ``co(i, j)`` sums, over the plays of ``i``, whether ``j`` is
played in the same session. (The official loop adds 1 per distinct co-item for each play of ``i``; without
repeated plays in a session this is the paper's "sessions holding both" count, and ``alpha = 0.5`` its cosine.)
``lambda`` keeps rarely played items from looking similar by coincidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from recsys.core.errors import ConfigError
from trainer.sessions import Sessions, State


@dataclass(frozen=True)
class SessionItemKNNParams:
    n_sims: int = 100  # neighbours kept per item (official default)
    lmbd: float = 20.0  # support regularisation (official default)
    alpha: float = 0.5  # 0.5 = cosine

    def __post_init__(self) -> None:
        if self.n_sims < 1 or self.lmbd < 0 or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("item-kNN needs n_sims >= 1, lmbd >= 0 and alpha in [0, 1]")


def similarity_matrix(sessions: Sessions, params: SessionItemKNNParams) -> sp.csr_matrix:
    """Items x items similarities, each row cut to its ``n_sims`` largest (positive) entries."""
    n = sessions.n_items
    session_of = np.repeat(np.arange(len(sessions)), sessions.lengths)
    plays = sp.csr_matrix(
        (np.ones(sessions.n_events, dtype=np.float64), (session_of, sessions.items)), shape=(len(sessions), n)
    )
    plays.sum_duplicates()  # sessions x items play counts
    present = plays.copy()
    present.data = np.ones_like(present.data)
    co = (plays.T @ present).tocoo()  # co[i, j] = sum over plays of i of [j in the same session]
    support = np.asarray(plays.sum(axis=0)).ravel()
    off_diagonal = co.row != co.col
    rows, cols, values = co.row[off_diagonal], co.col[off_diagonal], co.data[off_diagonal]
    values = values / (
        (support[rows] + params.lmbd) ** params.alpha * (support[cols] + params.lmbd) ** (1.0 - params.alpha)
    )
    # Keep the n_sims best of each row: sort by (row, -value, col) and cut on the rank within the row.
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    first_of_row = np.searchsorted(rows, rows, side="left")
    top = (np.arange(len(rows)) - first_of_row) < params.n_sims
    matrix = sp.csr_matrix((values[top].astype(np.float32), (rows[top], cols[top])), shape=(n, n))
    matrix.sort_indices()
    return matrix


class SessionItemKNN:
    """Fit on training sessions; as a :class:`~trainer.sessions.NextItemScorer` it scores from the last item."""

    def __init__(self, params: SessionItemKNNParams | None = None) -> None:
        self.params = params or SessionItemKNNParams()
        self.similarities = sp.csr_matrix((0, 0), dtype=np.float32)

    @property
    def n_items(self) -> int:
        return int(self.similarities.shape[0])

    def fit(self, train: Sessions) -> SessionItemKNN:
        self.similarities = similarity_matrix(train, self.params)
        return self

    def scores_after(self, items: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Dense ``[len(items), n_items]`` scores of the next play after each item."""
        if self.n_items == 0:
            raise ConfigError("item-kNN model is not fitted")
        dense: npt.NDArray[np.float32] = self.similarities[np.asarray(items, dtype=np.int64)].toarray()
        return dense

    def initial_state(self, batch_size: int) -> State:
        return []

    def step(self, state: State, items: torch.Tensor) -> tuple[torch.Tensor, State]:
        return torch.from_numpy(self.scores_after(items.cpu().numpy())), state
