"""The approximate factor scorer: a FAISS index over the item rows answers ``(USER_VECTOR, EXCLUDE, TOP_K)``
like the exact scorer, without reading the whole catalogue per request.

Layout (so inner products equal the exact scorer's ``u . v + bias``): item row ``[v, bias]`` (``D + 1``
columns), query ``[u, 1]`` (the lookup's ``[u, 0]`` row with its last column set). The popularity column of the
exact scorer stays out of the index: it is what only the fallback reads, and in the index it dominated the
k-means partition (recall@10 0.0 at 1 of 4 lists on the test catalogue). Guarantees kept from the exact path:

* heard items are never answered: each row is searched with a FAISS id selector that leaves its heard items out,
  so the search is ``ef_search`` deep whatever the history. Asking for ``k`` plus the heard items and dropping them
  searched at least ``k + heard`` deep (~100 for this world's listeners, a batch's longest history for all its
  rows); at one depth both cost the same and reach the same recall (1M items: ~0.3 ms at ``ef_search`` 256,
  recall@10 0.983), so the selector lets tuning choose a shallower search (10M items: 64). A row that still comes
  back short (an IVF probe that held too few items) is searched again exhaustively, so the answer is complete
  (``min(k, items left)`` items);
* items whose factors are negligible (never played: ALS leaves them at ~1e-11; ``trainer.ann.NEGLIGIBLE``)
  score their bias for everyone, so they stay out of the index and are merged in from one list sorted by that
  score (99% of a sparse 10M-item catalogue: indexed, they cost an 18-minute HNSW build and recall@10 0.86);
* the popularity fallback is unchanged: fallback rows (the pseudo-user ``(0, ..., 0, 1)``, see
  ``trainer.export.FactorScorer``) are answered from the stored popularity order minus their exclusions, never
  from the index (a coarse quantizer does not know popularity).

faiss is imported here only, where a version with an index loads (``faiss-cpu``; numpy < 2 compatible).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.contract import ANN_FILE, ANN_INDEX_FILE, PAD, USER_VECTOR

KINDS = ("flat", "ivf_flat", "hnsw")


@dataclass(frozen=True)
class SearchSettings:
    """How the index is searched: ``kind`` and its one knob (IVF: ``nprobe`` lists; HNSW: ``ef_search``)."""

    kind: str
    nprobe: int = 1
    ef_search: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r} ({', '.join(KINDS)})")
        if self.nprobe < 1 or self.ef_search < 1:
            raise ValueError(f"nprobe and ef_search must be >= 1, got {self.nprobe}, {self.ef_search}")


class AnnRetriever:
    """``(vectors [B, D + 1], exclude [B, H], top_k [B, 1])`` -> ``(scores, items)`` ``[B, min(max(TOP_K), n)]``,
    items -1 and scores -inf where fewer items remain, like the exact scorer."""

    def __init__(
        self,
        index: Any,
        settings: SearchSettings,
        popular: npt.NDArray[np.int64],
        popular_scores: npt.NDArray[np.float32],
        *,
        ids: npt.NDArray[np.int64] | None = None,
        constant: npt.NDArray[np.int64] | None = None,
        constant_scores: npt.NDArray[np.float32] | None = None,
    ) -> None:
        import faiss

        self._faiss = faiss
        self.index, self.settings = index, settings
        self.popular, self.popular_scores = popular, popular_scores
        self.indexed = int(index.ntotal)
        self.ids = np.arange(self.indexed, dtype=np.int64) if ids is None else ids  # index position -> item
        self.constant = np.empty(0, dtype=np.int64) if constant is None else constant  # zero-factor items, best first
        self.constant_scores = np.empty(0, dtype=np.float32) if constant_scores is None else constant_scores
        self.n_items = self.indexed + len(self.constant)
        self.position = np.full(self.n_items, -1, dtype=np.int64)  # item -> index position, -1 outside the index
        self.position[self.ids] = np.arange(self.indexed)
        self.dim = int(index.d)
        self.widths = {USER_VECTOR: self.dim}  # what the served step checks each request's rows against
        if settings.kind == "ivf_flat":
            self._ivf = faiss.extract_index_ivf(index)
            self._ivf.nprobe = settings.nprobe
        if settings.kind == "hnsw":
            self._storage = faiss.downcast_index(index.storage)

    @classmethod
    def load(cls, folder: Path, *, threads: int | None = None) -> AnnRetriever:
        """The index and settings of a published version folder; ``threads`` sets FAISS's OpenMP threads."""
        import faiss

        if threads is not None:
            faiss.omp_set_num_threads(threads)
        with np.load(folder / ANN_FILE, allow_pickle=False) as npz:
            settings = SearchSettings(str(npz["kind"]), int(npz["nprobe"]), int(npz["ef_search"]))
            popular = npz["popular"].astype(np.int64)
            popular_scores = npz["popular_scores"].astype(np.float32)
            split = {key: npz[key] for key in ("ids", "constant", "constant_scores") if key in npz.files}
        return cls(faiss.read_index(str(folder / ANN_INDEX_FILE)), settings, popular, popular_scores, **split)

    def __call__(
        self, vectors: npt.NDArray[np.float32], exclude: npt.NDArray[np.int64], top_k: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        vectors = np.asarray(vectors, dtype=np.float32)
        exclude = np.asarray(exclude, dtype=np.int64).reshape(len(vectors), -1)
        k = max(1, min(int(np.max(top_k)), self.n_items))
        items = np.full((len(vectors), k), PAD, dtype=np.int64)
        scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        heard = [np.unique(row[row >= 0]) for row in exclude]  # sorted: what ``within`` reads
        needed = [min(k, self.n_items - len(h)) for h in heard]
        fallback = ~vectors[:, :-1].any(axis=1) & (vectors[:, -1] == 1.0)
        pending = []
        for row in range(len(vectors)):
            if fallback[row] and self._from_popular(row, heard[row], needed[row], items, scores):
                continue
            pending.append(row)
        if pending:
            self._search(vectors, pending, heard, needed, k, items, scores)
        return scores, items

    def _from_popular(
        self,
        row: int,
        heard: npt.NDArray[np.int64],
        needed: int,
        items: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
    ) -> bool:
        order, values = unheard(self.popular, self.popular_scores, heard, needed)
        if len(order) < needed:
            return False  # the stored order is too short for this row: the index answers it
        items[row, :needed], scores[row, :needed] = order, values
        return True

    def _queries(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return queries(vectors)

    def _search(
        self,
        vectors: npt.NDArray[np.float32],
        rows: list[int],
        heard: list[npt.NDArray[np.int64]],
        needed: list[int],
        k: int,
        items: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
    ) -> None:
        # One search per row: each has its own exclusions (a FAISS selector applies to a whole search call).
        for row in rows:
            inside = self.position[heard[row]]
            inside = inside[inside >= 0]  # heard items that are in the index, as positions
            want = min(needed[row], self.indexed - len(inside))
            values, got = self.nearest(vectors[row], inside, want)
            if len(got) < want:
                values, got = self.nearest(vectors[row], inside, want, exhaustive=True)
            got = self.ids[got]
            if len(self.constant):
                extra, extra_values = unheard(self.constant, self.constant_scores, heard[row], needed[row])
                got, values = np.concatenate([got, extra]), np.concatenate([values, extra_values])
                order = np.argsort(-values, kind="stable")[: needed[row]]
                got, values = got[order], values[order]
            items[row, : len(got)], scores[row, : len(got)] = got, values

    def nearest(
        self, vector: npt.NDArray[np.float32], heard: npt.NDArray[np.int64], k: int, *, exhaustive: bool = False
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The top ``k`` of one query over the indexed items but the positions ``heard`` (a FAISS id selector), by
        the version's search settings or, ``exhaustive``, over every indexed item; returns scores and positions."""
        faiss = self._faiss
        if k <= 0:
            return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
        inner = faiss.IDSelectorBatch(np.ascontiguousarray(heard, dtype=np.int64)) if len(heard) else None
        selector = None if inner is None else faiss.IDSelectorNot(inner)
        index, kind = self.index, self.settings.kind
        if kind == "hnsw" and exhaustive:
            index, kind = self._storage, "flat"  # the graph's rows, scanned
        if kind == "ivf_flat":
            probe = self._ivf.nlist if exhaustive else self.settings.nprobe
            params = faiss.SearchParametersIVF(sel=selector, nprobe=probe)
        elif kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.settings.ef_search, k))  # type: ignore[attr-defined, unused-ignore]
        else:
            params = faiss.SearchParameters(sel=selector)
        values, found = index.search(self._queries(vector[None, :]), k, params=params)
        keep = found[0] >= 0
        del inner  # the selectors hold raw pointers: keep ``inner`` alive until the search is done
        return values[0][keep], found[0][keep]


def unheard(
    order: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], heard: npt.NDArray[np.int64], needed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The first ``needed`` items of a best-first list (and their scores) that are not in the sorted ``heard``;
    only the list's first ``needed + len(heard)`` can hold them."""
    head = slice(0, needed + len(heard))
    keep = ~within(order[head], heard)
    return order[head][keep][:needed], scores[head][keep][:needed]


def within(values: npt.NDArray[np.int64], ordered: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Which ``values`` occur in the sorted ``ordered``: a binary search, ~3 us per row where ``np.isin`` took
    ~30 us at these sizes (a hundred items against a hundred heard), a tenth of a 1M-item search."""
    if len(ordered) == 0:
        return np.zeros(len(values), dtype=np.bool_)
    found: npt.NDArray[np.bool_] = ordered[np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)] == values
    return found


def queries(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Lookup rows ``[u, 0]`` -> index queries ``[u, 1]`` (the 1 picks up each item's bias)."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    out[:, -1] = 1.0
    return out
