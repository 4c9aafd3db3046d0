"""New releases between retrains: items the model never saw get vectors from their first listeners' plays.

The closed-form ALS item step against the fixed user factors (:func:`serving.fold_in.closed_form_step`, the mirror
of the live user fold-in) gives an unseen item the vector that a full ALS sweep would start from; the run with
those items appended is then published like any other (export, parity, a new version, hot swap), so a release
becomes recommendable minutes after its first plays instead of at the next retrain.

Spam cannot make an item: an unseen id enters the catalogue only once :attr:`CatalogueRules.min_listeners`
distinct known listeners played it, and one listener's plays of it count at most
:attr:`CatalogueRules.max_plays_per_listener` times. BPR has no closed-form item step; its new items wait for the
next retrain.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
import torch

from recsys.core.errors import ConfigError
from serving.fold_in import closed_form_step
from serving.weights import bm25_values
from trainer.artifacts import Run, load_run, save_run
from trainer.data.interactions import IdMap, Interactions, from_frame
from trainer.models.als import ALS
from trainer.weighting import CorpusStats, Weighting


@dataclass(frozen=True)
class CatalogueRules:
    """When an unseen item id becomes part of the catalogue."""

    min_listeners: int = 3
    max_plays_per_listener: float = 5.0

    def __post_init__(self) -> None:
        if self.min_listeners < 1:
            raise ConfigError(f"min_listeners must be >= 1, got {self.min_listeners}")
        if not self.max_plays_per_listener >= 1:
            raise ConfigError(f"max_plays_per_listener must be >= 1, got {self.max_plays_per_listener}")


def admit(
    plays: Iterable[tuple[str, str, float]], known_items: Collection[str], rules: CatalogueRules
) -> dict[str, dict[str, float]]:
    """(listener, item, plays) rows -> the unseen items that qualify, each with its listeners' capped plays."""
    per_item: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for user, item, count in plays:
        if item not in known_items and count > 0:
            per_item[item][user] += float(count)
    return {
        item: {user: min(count, rules.max_plays_per_listener) for user, count in listeners.items()}
        for item, listeners in sorted(per_item.items())
        if len(listeners) >= rules.min_listeners
    }


def enforce(data: Interactions, known_items: Collection[str], rules: CatalogueRules) -> Interactions:
    """The spam rule on training data from the log: pairs of items the served run does not know stay only when the
    item has ``min_listeners`` distinct listeners, each listener's weight on it capped; the id maps are rebuilt, so
    an item that did not qualify is not in the retrained catalogue at all (a retrain must not let in what a
    refresh would refuse)."""
    known = set(known_items)
    items = data.item_ids.ids.astype(str)
    new = np.array([item not in known for item in items.tolist()], dtype=bool)
    listeners = np.bincount(data.items[new[data.items]], minlength=len(items))
    keep = ~new[data.items] | (listeners[data.items] >= rules.min_listeners)
    if keep.all() and not new.any():
        return data
    weights = np.where(new[data.items], np.minimum(data.weights, rules.max_plays_per_listener), data.weights)
    frame = pd.DataFrame(
        {
            "user": data.user_ids.ids[data.users[keep]],
            "item": data.item_ids.ids[data.items[keep]],
            "weight": weights[keep],
        }
    )
    out, _ = from_frame(frame, source="the log after the catalogue rules")
    return out


@dataclass(frozen=True)
class NewItems:
    ids: list[str]
    factors: npt.NDArray[np.float32]  # [k, D]
    item_idf: npt.NDArray[np.float64]  # [k], the BM25 statistic the fold-in weighs them with
    rows: list[npt.NDArray[np.int64]]  # each item's listeners (user indices)
    plays: list[npt.NDArray[np.float64]]  # and their capped plays


def item_vectors(
    model: ALS, user_ids: IdMap, history: sp.csr_matrix, admitted: dict[str, dict[str, float]], rules: CatalogueRules
) -> NewItems:
    """Vectors of the admitted items from their known listeners (listeners the model has no vector for do not
    count towards ``min_listeners`` here: their vectors live only in the served lookup)."""
    p = model.params
    users = model.user_factors.detach().cpu().numpy().astype(np.float64)
    gram = users.T @ users + p.regularization * np.eye(users.shape[1])
    totals = np.asarray(history.sum(axis=1), dtype=np.float64).ravel()
    out = NewItems([], np.zeros((0, users.shape[1]), np.float32), np.zeros(0), [], [])
    factors, idfs = [], []
    for item, listeners in admitted.items():
        known = [(i, count) for user, count in listeners.items() if (i := user_ids.index(user)) is not None]
        if len(known) < rules.min_listeners:
            continue
        rows = np.array([i for i, _ in known], dtype=np.int64)
        plays = np.array([count for _, count in known], dtype=np.float64)
        idf = float(np.log(max(model.n_users, 1)) - np.log1p(len(rows)))
        weights = _weights(plays, totals[rows] + plays, idf, model)
        factors.append(closed_form_step(gram, users[rows], 1.0 + p.alpha * weights).astype(np.float32))
        idfs.append(idf)
        out.ids.append(item)
        out.rows.append(rows)
        out.plays.append(plays)
    if factors:
        out = NewItems(out.ids, np.stack(factors), np.array(idfs), out.rows, out.plays)
    return out


def _weights(
    plays: npt.NDArray[np.float64], user_totals: npt.NDArray[np.float64], idf: float, model: ALS
) -> npt.NDArray[np.float64]:
    p = model.params
    if p.weighting == Weighting.raw:
        return plays
    if p.weighting == Weighting.log1p:
        return np.log1p(plays)
    return bm25_values(
        plays, user_totals, np.full(len(plays), idf), model.corpus.mean_user_total, k1=p.bm25_k1, b=p.bm25_b
    ).astype(np.float64)


@dataclass(frozen=True)
class Extended:
    run_dir: Path
    added: list[str]


def extend_run(
    run_dir: Path,
    out_dir: Path,
    admitted: dict[str, dict[str, float]],
    rules: CatalogueRules | None = None,
    *,
    run: Run | None = None,
) -> Extended:
    """Writes ``out_dir``: the run of ``run_dir`` (``run``, when the caller already loaded it) with the admitted
    items appended (model, ids, history with their listeners' plays, so those are not recommended back); ``added``
    is empty when none qualified."""
    rules = rules or CatalogueRules()
    run = run or load_run(run_dir)
    if not isinstance(run.model, ALS):
        raise ConfigError(f"{run_dir}: new items need the ALS item step; a {run.model.name} model waits for a retrain")
    new = item_vectors(run.model, run.user_ids, run.history, admitted, rules)
    if not new.ids:
        return Extended(run_dir, [])
    model = _appended(run.model, new)
    data = _interactions(run, new)
    metrics = {**run.metrics, "derived_from": str(run_dir.resolve()), "new_items": new.ids}
    save_run(out_dir, model, data, metrics)
    (out_dir / "new_items.json").write_text(json.dumps({"items": new.ids, "rules": rules.__dict__}, indent=2) + "\n")
    return Extended(out_dir, new.ids)


def _appended(model: ALS, new: NewItems) -> ALS:
    out = ALS(model.params, device=model.device)
    out.user_factors = model.user_factors.clone()
    out.item_factors = torch.cat([model.item_factors, torch.from_numpy(new.factors).to(model.device)])
    out.item_bias = None
    out.corpus = CorpusStats(np.concatenate([model.corpus.item_idf, new.item_idf]), model.corpus.mean_user_total)
    out.n_users, out.n_items = model.n_users, model.n_items + len(new.ids)
    return out


def _interactions(run: Run, new: NewItems) -> Interactions:
    """The run's history with the new items' plays, under id maps that append the new items."""
    coo = run.history.tocoo()
    first = run.history.shape[1]
    users = [coo.row.astype(np.int64), *new.rows]
    items = [coo.col.astype(np.int64)] + [np.full(len(r), first + n, np.int64) for n, r in enumerate(new.rows)]
    weights = [coo.data.astype(np.float64), *new.plays]
    names: Any = None
    if run.item_names is not None:
        names = np.concatenate([run.item_names.astype(object), np.array(new.ids, dtype=object)])
    return Interactions(
        users=np.concatenate(users).astype(np.int32),
        items=np.concatenate(items).astype(np.int32),
        weights=np.concatenate(weights).astype(np.float32),
        user_ids=run.user_ids,
        item_ids=IdMap(_ids(run.item_ids, new.ids)),
        item_names=names,
    )


_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")  # the same rule as trainer.data.log: fits int64, no "007"


def _ids(known: IdMap, new: list[str]) -> npt.NDArray[Any]:
    """The run's item ids with ``new`` appended, as one dtype: integers stay integers when every new id is a
    canonical integer (``"7"``, not ``"007"``, which as text is another item than 7); otherwise all become text."""
    if known.is_integer and all(_CANONICAL_INT.fullmatch(item) for item in new):
        return np.concatenate([known.ids, np.array([int(i) for i in new], dtype=known.ids.dtype)])
    return np.concatenate([known.ids.astype(str), np.array(new, dtype=str)])
