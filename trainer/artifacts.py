"""A training run on disk: what export, publish and serving read back.

DIR/model.npz      the fitted model (Recommender.save: arrays + JSON header, no pickle)
DIR/ids.npz        external user and item ids (and item names) by dense index
DIR/history.npz    CSR of the items each user already has (filtered out of recommendations)
DIR/metrics.json   offline metrics, timings, parameters and data summary
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.core.errors import ArtifactError
from serving.contract import HISTORY_FILE, IDS_FILE, METRICS_FILE, MODEL_FILE
from trainer.data.interactions import IdMap, Interactions, item_label
from trainer.models.base import Recommender

__all__ = ["HISTORY_FILE", "IDS_FILE", "METRICS_FILE", "MODEL_FILE", "Run", "load_run", "save_run"]


@dataclass(frozen=True)
class Run:
    model: Recommender
    user_ids: IdMap
    item_ids: IdMap
    item_names: npt.NDArray[np.str_] | None
    history: sp.csr_matrix
    metrics: dict[str, Any]

    def item_label(self, index: int) -> str:
        return item_label(self.item_ids, self.item_names, index)


def _id_array(ids: IdMap) -> npt.NDArray[Any]:
    # Object arrays would need pickle; strings are stored as fixed-width unicode instead.
    return ids.ids if ids.is_integer else ids.ids.astype(str)


def save_run(
    directory: Path,
    model: Recommender,
    data: Interactions,
    metrics: dict[str, Any],
    *,
    history: Interactions | None = None,
) -> None:
    """Writes a run: ``data`` gives the id maps; ``history`` (default ``data``) what each user already has.

    Serving excludes ``history``, so it should hold every known play even when the model saw only a split's
    training part.
    """
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    ids: dict[str, npt.NDArray[Any]] = {
        "user_ids": _id_array(data.user_ids),
        "item_ids": _id_array(data.item_ids),
    }
    if data.item_names is not None:
        ids["item_names"] = data.item_names.astype(str)
    np.savez(directory / IDS_FILE, **ids)
    history_matrix = (history if history is not None else data).to_csr()
    np.savez(
        directory / HISTORY_FILE,
        indptr=history_matrix.indptr,
        indices=history_matrix.indices,
        data=history_matrix.data,
        shape=np.asarray(history_matrix.shape, dtype=np.int64),
    )
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def load_run(directory: Path, *, device: str = "cpu") -> Run:
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such run directory")
    for name in (MODEL_FILE, IDS_FILE, HISTORY_FILE, METRICS_FILE):
        if not (directory / name).exists():
            raise ArtifactError(f"{directory}: missing {name} (was the run written by `recsys train --out`?)")
    model = Recommender.load(directory / MODEL_FILE, device=device)
    with np.load(directory / IDS_FILE, allow_pickle=False) as npz:
        user_ids = IdMap(npz["user_ids"])
        item_ids = IdMap(npz["item_ids"])
        names = npz["item_names"] if "item_names" in npz.files else None
    with np.load(directory / HISTORY_FILE, allow_pickle=False) as npz:
        shape = tuple(int(v) for v in npz["shape"])
        history = sp.csr_matrix((npz["data"], npz["indices"], npz["indptr"]), shape=shape)
    metrics = json.loads((directory / METRICS_FILE).read_text())
    return Run(model, user_ids, item_ids, names, history, metrics)
