"""The live fold-in: a listener's vector from their plays, by the ALS closed-form user step, in numpy.

Loaded by the lookup step of an ALS version (``fold_in.npz``); fed by :class:`serving.poller.FeedbackPoller`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.weights import weigh


def closed_form_step(
    gram: npt.NDArray[np.float64], others: npt.NDArray[np.float64], confidence: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """One row of an ALS half-sweep against the fixed other side: ``(G + Y^T (C - I) Y)^-1 Y^T c`` where ``Y`` are
    the ``others`` this row interacted with (their confidences ``c``) and ``G = Y_all^T Y_all + lambda I``.

    A listener's vector against the item factors (the live fold-in) and a new item's vector against the user
    factors (``trainer.new_items``) are both this step.
    """
    a = gram + (others.T * (confidence - 1.0)) @ others
    solved: npt.NDArray[np.float64] = np.linalg.solve(a, others.T @ confidence)
    return solved


class FoldIn:
    """The ALS closed-form user step against the published item factors, in numpy: a listener's vector from their
    plays, ``x = (G + Y_u^T (C_u - I) Y_u)^-1 Y_u^T c_u`` with ``G = Y^T Y + lambda I`` and the confidences of the
    training weighting (:mod:`serving.weights`), exactly what ``ALS.fold_in`` computes with torch.

    The item factors stay float32 as published (2.6 GB at 10M items x 64; float64 would double it): only the
    rows a listener played are widened to float64 for the solve, which gives the same numbers."""

    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as npz:
            self.items = npz["item_factors"].astype(np.float32, copy=False)  # rows widened when gathered
            self.gram = npz["gram"].astype(np.float64)
            self.alpha = float(npz["alpha"])
            self.weighting = str(npz["weighting"])
            self.k1, self.b = float(npz["bm25_k1"]), float(npz["bm25_b"])
            self.item_idf = npz.get("item_idf")
            self.mean_user_total = float(npz["mean_user_total"]) if "mean_user_total" in npz else 1.0

    def vector(self, items: npt.NDArray[np.int64], plays: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """The served row (factors, then 0) of a listener who played ``items`` ``plays`` times each (no repeats)."""
        weights = weigh(
            plays, self.weighting, item_idf=None if self.item_idf is None else self.item_idf[items],
            mean_user_total=self.mean_user_total, k1=self.k1, b=self.b,
        )  # fmt: skip
        keep = weights > 0
        others = self.items[items[keep]].astype(np.float64)
        x = closed_form_step(self.gram, others, 1.0 + self.alpha * weights[keep].astype(np.float64))
        return np.append(x, 0.0).astype(np.float32)


class TrainingPlays:
    """Known listeners' training plays, read from the history CSR when asked: nothing is copied per listener
    (a dict of every listener's plays held 100M entries at 1M listeners)."""

    def __init__(
        self,
        index: Mapping[str, int],
        indptr: npt.NDArray[np.integer[Any]],
        indices: npt.NDArray[np.integer[Any]],
        plays: npt.NDArray[np.floating[Any]],
    ) -> None:
        self.index, self.indptr, self.indices, self.plays = index, indptr, indices, plays

    def get(self, user: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]] | None:
        """(item indices, plays) of a known listener, else ``None``."""
        row = self.index.get(user)
        if row is None:
            return None
        lo, hi = int(self.indptr[row]), int(self.indptr[row + 1])
        return self.indices[lo:hi].astype(np.int64), self.plays[lo:hi].astype(np.float64)


class LivePlays:
    """Plays that reached PostgreSQL after the model was trained, per listener, with their folded-in vectors.

    Written by one poller thread (:meth:`add`), read by the request path (:meth:`get`): each listener's entry is
    replaced whole, so a reader sees the old or the new vector, never a half-built one. ``max_items``: how many
    of a listener's latest live items are excluded (besides their whole training history).
    """

    def __init__(self, fold_in: FoldIn, history: TrainingPlays, max_items: int) -> None:
        self.fold_in = fold_in
        self.history = history  # known listeners' training plays (for refolding them)
        self.max_items = max_items
        self._plays: dict[str, dict[int, float]] = {}
        self._served: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = {}

    def add(self, events: list[tuple[str, int]]) -> set[str]:
        """(listener, item index) plays; refolds each listener touched and returns them."""
        touched = set()
        for user, item in events:
            plays = self._plays.setdefault(user, {})
            plays[item] = plays.get(item, 0.0) + 1.0
            touched.add(user)
        for user in touched:
            live = self._plays[user]
            recent = np.fromiter(live, dtype=np.int64, count=len(live))
            counts = np.fromiter(live.values(), dtype=np.float64, count=len(live))
            trained = self.history.get(user)
            items, totals = recent, counts
            if trained is not None:  # training plays and live plays of one item add up
                items, inverse = np.unique(np.concatenate([trained[0], recent]), return_inverse=True)
                summed = np.bincount(inverse, weights=np.concatenate([trained[1], counts]))
                totals = summed.astype(np.float64, copy=False)
            self._served[user] = (self.fold_in.vector(items, totals), recent[-self.max_items :])
        return touched

    def get(self, user: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None:
        """(vector, live items to exclude) of a listener with live plays, else ``None``."""
        return self._served.get(user)
