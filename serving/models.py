"""The python-backend models of the repository; each ``triton_models/<name>/model.py`` re-exports one of them.

* ``recsys_lookup``, ``recsys_lookup_popular``: :class:`Lookup` (USER_ID, TOP_K -> USER_VECTOR, EXCLUDE, FALLBACK,
  MODEL_VERSION);
* ``recsys_session_lookup``: :class:`SessionLookupModel` (USER_ID, TOP_K -> ITEM_SEQUENCE, FALLBACK, MODEL_VERSION);
* ``recsys_scorer_torchscript``, ``recsys_scorer_onnx``, ``recsys_session_scorer``: :class:`ScorerModel` (the
  exported graph's inputs -> SCORES, ITEMS);
* ``recsys_topk``, ``recsys_session_topk``: :class:`TopK` (ITEMS, SCORES, TOP_K -> ITEM_IDS, SCORES);
* ``recsys_fused``: :class:`Fused` (USER_ID, TOP_K -> ITEM_IDS, SCORES, FALLBACK, MODEL_VERSION);
* ``recsys_scorer_ann``: :class:`AnnScorerModel` (the factor scorer's inputs, answered by a FAISS index -> ITEM_IDS,
  SCORES: it ends ``recsys_ann``).

Every request of a batch is checked on its own (a bad one gets INVALID_ARG alone) and the good ones are computed
together (:class:`serving.stub.BatchedModel`).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from serving.contract import (
    EXCLUDE,
    FALLBACK,
    FOLD_IN_FILE,
    IDS_FILE,
    ITEM_IDS,
    ITEM_SEQUENCE,
    ITEMS,
    MANIFEST_FILE,
    MAX_TOP_K,
    MODEL_VERSION,
    RECALL_METRIC,
    SCORES,
    SEQUENCE_LENGTH,
    SEQUENCES_FILE,
    TOP_K,
    USER_ID,
    USER_VECTOR,
)
from serving.fold_in import FoldIn, LivePlays
from serving.lookup import SessionLookup, UserLookup, check_request, decode_user_ids, item_index
from serving.scorer import Scorer, stack_rows
from serving.stub import (
    Arrays,
    BadRequest,
    BatchedModel,
    input_array,
    require_finite,
    require_indices,
    require_rows,
    require_top_k,
    require_width,
    split,
)
from serving.topk import ItemIds, ranked, trim

if TYPE_CHECKING:
    from serving.gpu import DeviceScorer

log = logging.getLogger(__name__)


def log_until(folder: Path) -> datetime | None:
    """Where the training data of a version trained on the feedback log ended (its ``publish.json``), else None."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return None
    until = json.loads(manifest.read_text()).get("log_until")
    return None if until is None else datetime.fromisoformat(str(until))


def _is_true(value: str) -> bool:
    return value.strip().lower() == "true"


FACTOR_SCORER_INPUTS = (USER_VECTOR, EXCLUDE, TOP_K)
#: config.pbtxt data types -> the numpy dtype a request's tensor arrives in
_DTYPES: dict[str, Any] = {
    "TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_BOOL": np.bool_, "TYPE_STRING": np.object_,
}  # fmt: skip


def _instance_device(args: dict[str, Any]) -> str | None:
    """``cuda:N`` for a ``KIND_GPU`` instance (Triton says which GPU), else ``None``."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id') or 0)}"
    return None


def _factor_scorer(model: BatchedModel, device: str | None, fmt: str, inputs: tuple[str, ...]) -> Scorer | DeviceScorer:
    """The factor scorer of ``model``'s version: :class:`serving.gpu.DeviceScorer` on a GPU instance (or on the CPU
    with ``device_scorer=true``, how tests run that code without a GPU), else the export's own runtime."""
    if device is None and _is_true(model.param("device_scorer", "false")):
        device = "cpu"
    if device is not None and inputs == FACTOR_SCORER_INPUTS:
        from serving.gpu import DeviceScorer  # torch only where a device scorer runs

        precision = model.param("precision", "fp16")
        return DeviceScorer.load(model.folder, fmt, device, precision="fp32" if precision == "fp32" else "fp16")
    if device is not None:
        log.warning("%s: no device scorer for inputs %s; the CPU scorer runs", type(model).__name__, inputs)
    return Scorer(model.folder, fmt, inputs, threads=int(model.param("threads", "1")))


class _UserRequests(BatchedModel):
    """Reads (USER_ID, TOP_K) and checks them: the public inputs of every ensemble."""

    max_top_k: int

    def setup(self) -> None:
        self.max_top_k = int(self.param("max_top_k", str(MAX_TOP_K)))

    def read(self, request: Any) -> Arrays:
        users, top_k = input_array(request, USER_ID, np.object_), input_array(request, TOP_K, np.int64)
        require_rows({USER_ID: users, TOP_K: top_k})
        require_width(TOP_K, top_k, 1)
        keys = decode_user_ids(users)
        if len(keys) != len(top_k):
            raise BadRequest(f"{USER_ID} holds one id per row, got {list(users.shape)}")
        problem = check_request(keys, top_k, self.max_top_k)
        if problem is not None:
            raise BadRequest(problem)
        return np.array(keys, dtype=object), top_k

    def _versions(self, n: int) -> npt.NDArray[np.int64]:
        return np.full((n, 1), self.version, dtype=np.int64)


class Lookup(_UserRequests):
    """Factor family, step 1: the listener's row (trained, live fold-in, or the fallback) and what to exclude.

    Parameters: ``personal`` (false: everyone gets the fallback row, i.e. popularity minus what they heard;
    recsys_lookup_popular) and ``live_fold_in`` (true: with ``RECSYS_DATABASE_URL`` in Triton's environment and
    an ALS version, a poller follows new clicks and folds those listeners in; :mod:`serving.poller`).
    """

    def setup(self) -> None:
        super().setup()
        self.personal = _is_true(self.param("personal", "true"))
        self.lookup = UserLookup(self.folder)
        self.poller: Any = None
        dsn = os.environ.get("RECSYS_DATABASE_URL")
        live = _is_true(self.param("live_fold_in", "true"))
        if self.personal and live and dsn and (self.folder / FOLD_IN_FILE).exists():
            from serving.poller import FeedbackPoller  # asyncpg only where live fold-in runs

            plays = LivePlays(FoldIn(self.folder / FOLD_IN_FILE), self.lookup.training_plays(), self.lookup.width)
            self.lookup.live = plays
            self.poller = FeedbackPoller(dsn, item_index(self.folder), plays.add, since=log_until(self.folder))
            self.poller.start()

    def run(self, batch: list[Arrays]) -> list[dict[str, npt.NDArray[Any]]]:
        keys = np.concatenate([b[0] for b in batch]).tolist()
        vectors, exclude, unknown = self.lookup(keys)
        if not self.personal:
            vectors = np.broadcast_to(self.lookup.table[-1], vectors.shape).copy()
        sizes = [len(b[0]) for b in batch]
        parts = zip(split(vectors, sizes), split(exclude, sizes), split(unknown, sizes), strict=True)
        return [
            {USER_VECTOR: v, EXCLUDE: e, FALLBACK: u[:, None], MODEL_VERSION: self._versions(len(u))}
            for v, e, u in parts
        ]

    def finalize(self) -> None:
        if self.poller is not None:
            self.poller.stop()


class SessionLookupModel(_UserRequests):
    """Session family, step 1: the listener's latest plays (``sequence_length`` of them, from ``sequences_file``)."""

    def setup(self) -> None:
        super().setup()
        width = int(self.param("sequence_length", str(SEQUENCE_LENGTH)))
        self.lookup = SessionLookup(self.folder, self.param("sequences_file", SEQUENCES_FILE), width)

    def run(self, batch: list[Arrays]) -> list[dict[str, npt.NDArray[Any]]]:
        sequence, fallback = self.lookup(np.concatenate([b[0] for b in batch]).tolist())
        sizes = [len(b[0]) for b in batch]
        return [
            {ITEM_SEQUENCE: s, FALLBACK: f[:, None], MODEL_VERSION: self._versions(len(f))}
            for s, f in zip(split(sequence, sizes), split(fallback, sizes), strict=True)
        ]


class ScorerModel(BatchedModel):
    """Step 2 of both families: the version's export (``format``: torchscript or onnx) on the whole batch.

    The inputs are the config's, in order (the exported graph's). Each request is checked on its own before the
    batch runs, whoever sent it: the config's dtypes, one batch size, finite user vectors of the export's width,
    item indices (EXCLUDE, ITEM_SEQUENCE) inside the version's catalogue (its ``publish.json``), TOP_K's range.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.dtypes = {tensor["name"]: _DTYPES.get(tensor["data_type"]) for tensor in config["input"]}
        self.dims = {tensor["name"]: [int(d) for d in tensor.get("dims", [])] for tensor in config["input"]}
        self.device = _instance_device(args)
        super().initialize(args)  # setup(): subclasses load another scorer, then the checks below follow it
        declared = getattr(self.scorer, "widths", {})
        fixed = {name: dims[0] for name, dims in self.dims.items() if len(dims) == 1 and dims[0] > 0}
        self.widths: dict[str, int | None] = {name: fixed.get(name, declared.get(name)) for name in self.inputs}

    def setup(self) -> None:
        self.scorer = _factor_scorer(self, self.device, self.param("format", "torchscript"), tuple(self.inputs))
        manifest = self.folder / MANIFEST_FILE
        self.n_items = json.loads(manifest.read_text()).get("n_items") if manifest.is_file() else None
        self.max_top_k = int(self.param("max_top_k", str(MAX_TOP_K)))

    def read(self, request: Any) -> Arrays:
        named = {name: input_array(request, name, self.dtypes[name]) for name in self.inputs}
        require_rows(named)
        for name, array in named.items():
            require_width(name, array, self.widths.get(name))
            if name == TOP_K:
                require_top_k(array, self.max_top_k)
            elif name in (EXCLUDE, ITEM_SEQUENCE):
                require_indices(name, array, self.n_items)
            elif array.dtype.kind == "f":
                require_finite(name, array)
        return tuple(named.values())

    def scored(self, batch: list[Arrays]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """The whole batch's ``(scores, items)``: max(TOP_K) of the batch per row, best first."""
        stacked = [
            stack_rows([b[i] for b in batch]) if name == EXCLUDE else np.concatenate([b[i] for b in batch])
            for i, name in enumerate(self.inputs)
        ]
        return self.scorer(*stacked)

    def run(self, batch: list[Arrays]) -> list[dict[str, npt.NDArray[Any]]]:
        scores, items = self.scored(batch)
        sizes = [len(b[0]) for b in batch]
        return [{SCORES: s, ITEMS: i} for s, i in zip(split(scores, sizes), split(items, sizes), strict=True)]


class TopK(BatchedModel):
    """Step 3 of both families: each request cut back to its own k, indices mapped to external ids."""

    def setup(self) -> None:
        self.item_ids = ItemIds(self.folder)
        self.max_top_k = int(self.param("max_top_k", str(MAX_TOP_K)))

    def read(self, request: Any) -> Arrays:
        items, scores = input_array(request, ITEMS, np.int64), input_array(request, SCORES, np.float32)
        top_k = input_array(request, TOP_K, np.int64)
        require_rows({ITEMS: items, SCORES: scores, TOP_K: top_k})
        if items.shape != scores.shape:
            raise BadRequest(f"ITEMS {list(items.shape)} and SCORES {list(scores.shape)} must have one shape")
        require_width(TOP_K, top_k, 1)
        require_indices(ITEMS, items, self.item_ids.padding)
        require_top_k(top_k, self.max_top_k)
        if np.isnan(scores).any():  # -inf marks a row's missing candidates; NaN is never produced
            raise BadRequest("SCORES holds NaN")
        return items, scores, top_k

    def run(self, batch: list[Arrays]) -> list[dict[str, npt.NDArray[Any]]]:
        out = []
        for items, scores, top_k in batch:
            kept, kept_scores = trim(items, scores, int(top_k.max()))
            out.append({ITEM_IDS: self.item_ids(kept), SCORES: kept_scores})
        return out


class Fused(_UserRequests):
    """The factor family's whole path in one model (lookup -> scorer -> top-k): the yardstick of the ensembles."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.device = _instance_device(args)
        super().initialize(args)

    def setup(self) -> None:
        super().setup()
        self.lookup = UserLookup(self.folder)
        self.item_ids = ItemIds(self.folder)
        self.scorer = _factor_scorer(self, self.device, self.param("format", "onnx"), FACTOR_SCORER_INPUTS)

    def run(self, batch: list[Arrays]) -> list[dict[str, npt.NDArray[Any]]]:
        vectors, exclude, unknown = self.lookup(np.concatenate([b[0] for b in batch]).tolist())
        top_k = np.concatenate([b[1] for b in batch])
        scores, items = self.scorer(vectors, exclude, top_k)
        answers = ranked(self.item_ids, items, scores, [b[1] for b in batch])
        fallback = split(unknown[:, None], [len(b[0]) for b in batch])
        return [
            {**a, FALLBACK: f, MODEL_VERSION: self._versions(len(f))} for a, f in zip(answers, fallback, strict=True)
        ]


class AnnScorerModel(ScorerModel):
    """Step 2 and last of ``recsys_ann``: the exact scorer's inputs and checks, answered by the version's FAISS
    index (:class:`serving.retrieval.AnnRetriever`: heard items excluded, top_k complete, the fallback unchanged)
    and returned as the top-k step returns them: each request's own k, external ids. FAISS answers best first, so
    there is nothing left for a top-k step to do, and on a CPU host each python-backend hop costs ~0.7 ms whatever
    it computes (``benchmarks/results/catalog_scale-steps.md``). The recall@10 the version passed at publish
    becomes the gauge ``recsys_ann_recall_at_10{model, version}`` on Triton's metrics endpoint."""

    def initialize(self, args: dict[str, Any]) -> None:
        self.model_name = str(args.get("model_name", "recsys_scorer_ann"))
        super().initialize(args)

    def setup(self) -> None:
        from serving.retrieval import AnnRetriever  # faiss only where an index is served

        self.scorer = AnnRetriever.load(self.folder, threads=int(self.param("threads", "1")))  # type: ignore[assignment]
        manifest = self.folder / MANIFEST_FILE
        published = json.loads(manifest.read_text()) if manifest.is_file() else {}
        self.n_items = published.get("n_items")
        self.max_top_k = int(self.param("max_top_k", str(MAX_TOP_K)))
        recall = (published.get("ann") or {}).get("recall_at_10")
        self.recall_gauge = None if recall is None else _gauge(self.model_name, self.version, float(recall))
        if not (self.folder / IDS_FILE).is_file():
            raise FileNotFoundError(
                f"{self.folder} has no {IDS_FILE}: it was published before {self.model_name} answered item ids "
                "itself; publish the run again (`recsys publish RUN_DIR`)"
            )
        self.item_ids = ItemIds(self.folder)

    def run(self, batch: list[Arrays]) -> list[dict[str, npt.NDArray[Any]]]:
        scores, items = self.scored(batch)
        top_k = self.inputs.index(TOP_K)
        return ranked(self.item_ids, items, scores, [b[top_k] for b in batch])


def _gauge(model: str, version: int, recall: float) -> Any:
    """The published recall as a Triton metric (the family and its metric live as long as the model)."""
    import triton_python_backend_utils as pb_utils

    family = pb_utils.MetricFamily(
        name=RECALL_METRIC,
        description="recall@10 of the approximate scorer against the exact top-10, measured at publish",
        kind=pb_utils.MetricFamily.GAUGE,
    )
    gauge = family.Metric(labels={"model": model, "version": str(version)})
    gauge.set(recall)
    return family, gauge
