"""The approximate scorer's index, built at publish, and the recall gate that lets it be published.

Publish builds an index for a factor version only when asked or when the catalogue is large
(``serving.retrieval`` serves it from ``recsys_scorer_ann``); ``AnnPolicy.kind``:

* ``auto`` (the default): no index below ``threshold_items`` (the exact scan is cheap there, and the approximate
  models cost every Triton start 53 MiB and ~2 s even at 400 items: README), ``hnsw`` from it on: HNSW graph, 32 links
  per item built with 80 candidates, float32 rows (scores stay exact inner products), chosen by measurement on ALS
  factors of the synthetic catalogue (``benchmarks/results/catalog_scale.md``). IVF over inner products stayed
  below 0.2 at 128 of 4096 lists probed (popular items' long vectors pull every query to the same lists). HNSW over
  inner products has a ceiling that search depth does not lift (items whose neighbours by inner product are all
  popular hubs get few links in): on the 1M-item world (100k listeners x 10M plays) 16 links built with 40
  candidates, FAISS's defaults, stalled at recall@10 0.93 even at ``ef_search`` 1024; 32 links built with 80 reach
  0.977 at 256 and 0.984 at 512, for a 3.3x build (39 s against 12 s) and 128 more bytes per indexed item;
* ``none``: never; ``flat`` (exhaustive: the approximate ensemble answers exactly what the exact one does),
  ``ivf_flat`` or ``hnsw``: that kind whatever the size.

The gate: ``nprobe`` (IVF) or ``ef_search`` (HNSW) is tuned on one sample of users (the smallest value, to within
an eighth, reaching ``min_recall`` + ``tune_margin``: :func:`_tune`), then recall@10 of the served retriever
against the exact top-10 (both with the users' heard items left out) is measured on a second, disjoint sample;
below ``min_recall`` the publish is refused. The margin (0.02) is there because, tuned to exactly 0.95 on one
sample, HNSW measured 0.947 on the other. The figure goes into the version's ``publish.json`` and the scorer
exports it as a Triton metric.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.core.errors import ConfigError
from serving.contract import ANN_FILE, ANN_INDEX_FILE, MAX_TOP_K
from serving.lookup import padded_rows
from serving.retrieval import KINDS, AnnRetriever, SearchSettings, queries

if TYPE_CHECKING:
    from recsys.core.settings import Settings

logger = logging.getLogger(__name__)

RECALL_K = 10
NEGLIGIBLE = 1e-6  # a factor norm below this share of the largest counts as zero (the item scores its bias)
ADD_CHUNK = 1_000_000  # rows added to the index at a time (bounds FAISS's temporary assignment buffers)
INHERIT = "inherit"  # the kind the lineage's newest version was published with (trainer.triton.publish)
#: ``AnnPolicy.kind``: ``recsys publish --ann`` and ``RECSYS_ANN_KIND`` take the same words
POLICY_KINDS = (INHERIT, "auto", "none", *KINDS)


@dataclass(frozen=True)
class AnnPolicy:
    """What publish builds and how strictly it is checked (``recsys publish --ann``, ``RECSYS_ANN_*``)."""

    kind: str = "auto"  # auto: none below threshold_items, hnsw from it on; or none, flat, ivf_flat, hnsw; inherit
    threshold_items: int = 1_000_000
    min_recall: float = 0.95
    tune_margin: float = 0.02  # tuning aims this far above min_recall, so the disjoint gate sample passes too
    sample_users: int = 1000  # per sample: one tunes, a disjoint one gates
    nlist: int | None = None  # IVF lists; default about 4 sqrt(n), a power of two
    nprobe: int | None = None  # IVF lists probed; default tuned
    max_nprobe: int = 512
    ef_search: int | None = None  # HNSW; default tuned
    hnsw_links: int = 32  # HNSW's M: links per item (memory ~ 8 M bytes per item beside its row)
    hnsw_construction: int = 80  # HNSW's efConstruction: candidates weighed per insertion (build time ~ linear)
    max_ef_search: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ConfigError(f"unknown index kind {self.kind!r}: {', '.join(POLICY_KINDS)}")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ConfigError(f"min_recall must be in 0..1, got {self.min_recall}")
        if self.sample_users < 1 or self.threshold_items < 0:
            raise ConfigError("sample_users must be >= 1 and threshold_items >= 0")

    @classmethod
    def from_settings(
        cls, settings: Settings, *, kind: str | None = None, min_recall: float | None = None
    ) -> AnnPolicy:
        """The policy ``RECSYS_ANN_*`` set (``kind`` and ``min_recall``, when given, override theirs: the flags of
        ``recsys publish``): every publish a command starts, the loop's included, builds and gates by it."""
        return cls(
            kind=kind or settings.ann_kind,
            threshold_items=settings.ann_threshold_items,
            min_recall=settings.ann_min_recall if min_recall is None else min_recall,
            sample_users=settings.ann_sample_users,
        )

    def kind_for(self, n_items: int) -> str | None:
        """The index to build for a catalogue of ``n_items``, or None: no index (no approximate scorer)."""
        if self.kind == INHERIT:
            raise ConfigError("an inherited index policy must be resolved against the repository first")
        if self.kind == "auto":
            return None if n_items < self.threshold_items else "hnsw"
        return None if self.kind == "none" else self.kind


@dataclass(frozen=True)
class AnnReport:
    """What the manifest records about a version's index."""

    kind: str
    n_items: int
    indexed_items: int  # items with factors; the others (all-zero factors) are merged in by their bias
    nlist: int | None
    nprobe: int | None
    ef_search: int | None
    recall_at_10: float  # on the gate sample
    tuning_recall_at_10: float | None
    users_checked: int
    min_recall: float
    build_seconds: float
    check_seconds: float
    index_bytes: int

    def as_manifest(self) -> dict[str, Any]:
        return asdict(self)


def item_rows(
    items: npt.NDArray[np.floating[Any]], bias: npt.NDArray[np.floating[Any]] | None
) -> npt.NDArray[np.float32]:
    """``[v, bias]`` per item (float32): its inner product with a query ``[u, 1]`` is the exact scorer's score of a
    known listener (``trainer.export.FactorScorer``); the fallback is answered from the popularity order."""
    n, dim = items.shape
    rows = np.empty((n, dim + 1), dtype=np.float32)
    rows[:, :dim] = items
    rows[:, dim] = 0.0 if bias is None else np.asarray(bias, dtype=np.float32)
    return rows


def default_nlist(n_items: int) -> int:
    """About ``4 sqrt(n)`` lists, a power of two, at most 16384 (k-means on 2 cores stays within minutes)."""
    return int(min(16384, max(1, 2 ** round(math.log2(max(4.0 * math.sqrt(n_items), 1.0))))))


def build_index(
    rows: npt.NDArray[np.float32],
    kind: str,
    *,
    nlist: int | None = None,
    links: int = 32,
    construction: int = 80,
    seed: int = 0,
) -> Any:
    """A FAISS inner-product index over ``rows`` (IVF: trained on at most 64 rows per list)."""
    import faiss

    n, dim = rows.shape
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, links, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = construction
    elif kind == "ivf_flat":
        lists = min(nlist or default_nlist(n), n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = rows[np.sort(rng.choice(n, size=min(n, 64 * lists), replace=False))]
        index.train(sample)
        del sample
    else:
        raise ConfigError(f"unknown index kind {kind!r}")
    for start in range(0, n, ADD_CHUNK):
        index.add(rows[start : start + ADD_CHUNK])
    return index


def exact_top(
    rows: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], heard: list[npt.NDArray[np.int64]], k: int
) -> list[npt.NDArray[np.int64]]:
    """The exact top ``k`` item indices of each query (``[u, 1]``) without its heard items."""
    import faiss

    asked = min(len(rows), k + max((len(h) for h in heard), default=0))
    _, found = faiss.knn(queries, rows, asked, metric=faiss.METRIC_INNER_PRODUCT)
    return [f[(f >= 0) & ~np.isin(f, h)][:k] for f, h in zip(found, heard, strict=True)]


def recall_at_k(
    approx: npt.NDArray[np.int64],
    exact: list[npt.NDArray[np.int64]],
    *,
    approx_scores: npt.NDArray[np.float32] | None = None,
    exact_kth: npt.NDArray[np.float32] | None = None,
    tolerance: float = 1e-5,
) -> float:
    """Share of the exact top-k items the approximate answer holds, pooled over users. With scores, an answered
    item whose exact score ties the exact k-th score (within ``tolerance``, relative) counts as a hit too, as
    ann-benchmarks counts neighbours at the k-th distance: among tied items the exact top-k is arbitrary (a sparse
    catalogue's never-played items all score ~1e-11 for everyone)."""
    hits = total = 0
    for row, (a, e) in enumerate(zip(approx, exact, strict=True)):
        a = a[a >= 0]
        found = np.isin(a, e)
        if approx_scores is not None and exact_kth is not None and len(e):
            kth = float(exact_kth[row])
            found |= approx_scores[row][: len(a)] >= kth - tolerance * max(1.0, abs(kth))
        hits += min(int(found.sum()), len(e))
        total += len(e)
    return 1.0 if total == 0 else hits / total


def _measure(
    retriever: AnnRetriever,
    vectors: npt.NDArray[np.float32],
    exclude: npt.NDArray[np.int64],
    exact: tuple[list[npt.NDArray[np.int64]], npt.NDArray[np.float32]],
    k: int,
    rows: npt.NDArray[np.float32],
) -> float:
    # One user per call, as a lone request at c=1 is served (the retriever searches one row at a time anyway).
    top_k = np.full((1, 1), k, dtype=np.int64)
    found = np.concatenate([retriever(vectors[s : s + 1], exclude[s : s + 1], top_k)[1] for s in range(len(vectors))])
    q = queries(vectors)
    true = np.einsum("ijd,id->ij", rows[np.maximum(found, 0)], q)  # the answered items' exact scores
    return recall_at_k(found, exact[0], approx_scores=true, exact_kth=exact[1])


def _exact(
    rows: npt.NDArray[np.float32], vectors: npt.NDArray[np.float32], heard: list[npt.NDArray[np.int64]], k: int
) -> tuple[list[npt.NDArray[np.int64]], npt.NDArray[np.float32]]:
    """Exact top-k items per user and the exact score of each one's k-th (last) item."""
    top = exact_top(rows, queries(vectors), heard, k)
    q = queries(vectors)
    kth = np.array([float(rows[t[-1]] @ q[i]) if len(t) else -np.inf for i, t in enumerate(top)], dtype=np.float32)
    return top, kth


def _samples(
    users: npt.NDArray[np.float32], history: sp.csr_matrix, size: int, seed: int
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[npt.NDArray[np.int64]]]]:
    """Two disjoint samples of known users: (their lookup rows, padded exclusions, heard items)."""
    n_users = users.shape[0] - 1  # the last row is the fallback pseudo-user
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n_users, size=min(n_users, 2 * size), replace=False)
    half = (len(chosen) + 1) // 2
    out = []
    for part in (chosen[:half], chosen[half:] if len(chosen) > 1 else chosen[:half]):
        part = np.sort(part)
        heard = [history.indices[history.indptr[u] : history.indptr[u + 1]].astype(np.int64) for u in part]
        exclude = padded_rows(history.indptr, history.indices, part)  # as the served lookup pads them
        out.append((np.ascontiguousarray(users[part], dtype=np.float32), exclude, heard))
    return out


def _tune(kind: str, policy: AnnPolicy, measure: Any, nlist: int | None) -> tuple[SearchSettings, float | None]:
    """The smallest knob that reaches ``min_recall + tune_margin`` on the tuning sample (or the policy's own
    knob): doubled until it passes, then bisected between the last value that failed and the first that passed,
    to within an eighth (1M items: ef_search 128 gave 0.953, 256 0.983; the search cost grows with the knob)."""
    if kind == "flat":
        return SearchSettings("flat"), None
    if kind == "ivf_flat" and policy.nprobe is not None:
        return SearchSettings(kind, nprobe=policy.nprobe), None
    if kind == "hnsw" and policy.ef_search is not None:
        return SearchSettings(kind, ef_search=policy.ef_search), None
    top = min(policy.max_nprobe, nlist or 1) if kind == "ivf_flat" else policy.max_ef_search
    target = min(1.0, policy.min_recall + policy.tune_margin)

    def at(value: int) -> tuple[SearchSettings, float]:
        settings = SearchSettings(kind, nprobe=value) if kind == "ivf_flat" else SearchSettings(kind, ef_search=value)
        recall = measure(settings)
        logger.info("ann tuning: %s -> recall@10 %.4f", settings, recall)
        return settings, recall

    failed, value = 0, (1 if kind == "ivf_flat" else 16)
    settings, recall = at(value)
    while recall < target and value < top:
        failed, value = value, min(2 * value, top)
        settings, recall = at(value)
    if recall < target:
        return settings, recall  # the most the policy allows; the gate decides
    while failed and value - failed > max(1, value // 8):
        middle = (failed + value) // 2
        tried, got = at(middle)
        if got >= target:
            value, settings, recall = middle, tried, got
        else:
            failed = middle
    return settings, recall


def build_and_check(
    items: npt.NDArray[np.floating[Any]],
    bias: npt.NDArray[np.floating[Any]] | None,
    fallback: npt.NDArray[np.floating[Any]],
    users: npt.NDArray[np.float32],
    history: sp.csr_matrix,
    folder: Path,
    policy: AnnPolicy,
) -> AnnReport:
    """Builds the index for these factors, tunes and gates it, and writes ``ann.faiss`` + ``ann.npz`` into
    ``folder``; raises ``ExportError`` (nothing is written) when recall@10 is below ``policy.min_recall``."""
    import faiss

    from trainer.exporting import ExportError

    began = time.perf_counter()
    rows = item_rows(items, bias)
    kind = policy.kind_for(len(rows))
    if kind is None:
        raise ConfigError(f"no index to build: the policy {policy.kind!r} builds none for {len(rows)} items")
    # Items whose factors are negligible (ALS leaves never-played items at ~1e-11) score their bias for everyone:
    # they stay out of the index (99% of the sparse 10M-item world: an 18-minute HNSW build, recall@10 0.86).
    norms = np.linalg.norm(rows[:, :-1], axis=1)
    moving = norms > NEGLIGIBLE * float(norms.max(initial=0.0))
    ids = np.flatnonzero(moving).astype(np.int64)
    constant = np.flatnonzero(~moving).astype(np.int64)
    constant = constant[np.argsort(-rows[constant, -1], kind="stable")]
    constant_scores = rows[constant, -1].copy()
    indexed = rows if len(constant) == 0 else rows[ids]
    index = build_index(
        indexed,
        kind,
        nlist=policy.nlist,
        links=policy.hnsw_links,
        construction=policy.hnsw_construction,
        seed=policy.seed,
    )
    del indexed
    build_seconds = time.perf_counter() - began
    split = {"ids": ids, "constant": constant, "constant_scores": constant_scores}
    nlist = int(faiss.extract_index_ivf(index).nlist) if kind == "ivf_flat" else None

    began = time.perf_counter()
    order = np.argsort(-np.asarray(fallback, dtype=np.float32), kind="stable")
    popular = order[: min(len(order), MAX_TOP_K + int(np.diff(history.indptr).max(initial=0)))].astype(np.int64)
    popular_scores = np.asarray(fallback, dtype=np.float32)[popular]
    k = min(RECALL_K, len(rows))
    (tune_v, tune_x, tune_h), (gate_v, gate_x, gate_h) = _samples(users, history, policy.sample_users, policy.seed)
    tune_exact, gate_exact = _exact(rows, tune_v, tune_h, k), _exact(rows, gate_v, gate_h, k)

    def measure_on(settings: SearchSettings, sample: tuple[Any, Any, Any]) -> float:
        return _measure(AnnRetriever(index, settings, popular, popular_scores, **split), *sample, k, rows)

    settings, tuning = _tune(kind, policy, lambda s: measure_on(s, (tune_v, tune_x, tune_exact)), nlist)
    recall = measure_on(settings, (gate_v, gate_x, gate_exact))
    check_seconds = time.perf_counter() - began
    if recall < policy.min_recall:
        raise ExportError(
            f"approximate scorer refused: recall@10 {recall:.4f} < {policy.min_recall} on {len(gate_v)} users "
            f"({settings.kind}, nlist {nlist}, nprobe {settings.nprobe}, ef_search {settings.ef_search}); nothing "
            "was published. Publish with --ann none (exact scorer only), --ann flat (exhaustive) or a lower "
            "--ann-min-recall"
        )
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / ANN_INDEX_FILE))
    np.savez(
        folder / ANN_FILE,
        kind=np.array(settings.kind),
        nprobe=np.int64(settings.nprobe),
        ef_search=np.int64(settings.ef_search),
        popular=popular,
        popular_scores=popular_scores,
        **split,
    )
    report = AnnReport(
        kind=settings.kind,
        n_items=len(moving),
        indexed_items=int(index.ntotal),
        nlist=nlist,
        nprobe=settings.nprobe if kind == "ivf_flat" else None,
        ef_search=settings.ef_search if kind == "hnsw" else None,
        recall_at_10=round(recall, 6),
        tuning_recall_at_10=None if tuning is None else round(tuning, 6),
        users_checked=len(gate_v),
        min_recall=policy.min_recall,
        build_seconds=round(build_seconds, 3),
        check_seconds=round(check_seconds, 3),
        index_bytes=(folder / ANN_INDEX_FILE).stat().st_size,
    )
    logger.info("ann index: %s", report)
    return report
