"""Train → evaluate → save, the job behind ``recsys train`` (and the demo)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys.core.dsn import redact
from trainer.artifacts import save_run
from trainer.data.interactions import Events, Interactions
from trainer.evaluation import evaluate
from trainer.models.base import Recommender
from trainer.models.popularity import Popularity
from trainer.models.registry import model_class
from trainer.splits import Split, SplitKind, make_split, split_kind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    model: Recommender
    split: Split
    metrics: dict[str, Any]
    fitted_on: Interactions  # the split's train part, or all data after a refit
    history: Interactions  # every known pair (train + test): what serving must never recommend back


def build_model(name: str, params: dict[str, Any] | None = None, *, device: str = "cpu") -> Recommender:
    klass = model_class(name)
    return klass(klass.params_type.from_dict(params or {}), device=device)


def fit_timed(model: Recommender, data: Interactions, *, show_progress: bool) -> float:
    start = time.perf_counter()
    model.fit(data, show_progress=show_progress)
    return time.perf_counter() - start


def train_and_evaluate(
    data: Interactions,
    model_name: str,
    params: dict[str, Any] | None = None,
    *,
    split: SplitKind | str = SplitKind.random_holdout,
    seed: int = 42,
    device: str = "cpu",
    refit: bool = False,
    show_progress: bool = False,
    source: str = "",
) -> TrainResult:
    """Fits on the split's train part, scores the held-out part, and compares with popularity on the same split.

    With ``refit`` the saved model is fitted again on all (active) data after evaluation, which is what one
    serves; the metrics still describe the held-out evaluation.
    """
    parts = make_split(data, split, seed=seed)
    logger.info(
        "split %s: %d users, %d items, %d train / %d test pairs",
        split_kind(split).value,
        parts.train.n_users,
        parts.train.n_items,
        len(parts.train),
        len(parts.test),
    )
    model = build_model(model_name, params, device=device)
    fit_seconds = fit_timed(model, parts.train, show_progress=show_progress)
    scores = evaluate(model, parts.train, parts.test)
    baseline = evaluate(Popularity().fit(parts.train), parts.train, parts.test)

    history = _union(parts)
    fitted_on = parts.train
    if refit:
        fit_timed(model, history, show_progress=show_progress)
        fitted_on = history

    metrics: dict[str, Any] = {
        **scores,
        "model": model.name,
        "params": model.params.to_dict(),
        "fit_seconds": fit_seconds,
        "n_users": parts.train.n_users,
        "n_items": parts.train.n_items,
        "n_train": len(parts.train),
        "n_test": len(parts.test),
        "split": split_kind(split).value,
        "seed": seed,
        "device": str(model.device),
        "refit": refit,
        "data": redact(source),  # metrics.json is published (S3 on EKS): never a database password
        "baseline_popularity": baseline,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return TrainResult(model=model, split=parts, metrics=metrics, fitted_on=fitted_on, history=history)


def _union(parts: Split) -> Interactions:
    """Train and test parts together again (both share the split's compacted id maps), with their plays: a refit
    session model (GRU4Rec) trains on the events."""
    train, test = parts.train, parts.test
    timestamps = None
    if train.timestamps is not None and test.timestamps is not None:
        timestamps = np.concatenate([train.timestamps, test.timestamps])
    events = None
    if train.events is not None and test.events is not None:
        users = np.concatenate([train.events.users, test.events.users])
        items = np.concatenate([train.events.items, test.events.items])
        times = np.concatenate([train.events.timestamps, test.events.timestamps])
        order = np.lexsort((times, users))  # (user, time) order, as every Events
        events = Events(users[order], items[order], times[order])
    return Interactions(
        users=np.concatenate([train.users, test.users]),
        items=np.concatenate([train.items, test.items]),
        weights=np.concatenate([train.weights, test.weights]),
        user_ids=train.user_ids,
        item_ids=train.item_ids,
        timestamps=timestamps,
        item_names=train.item_names,
        events=events,
    )


def save_result(result: TrainResult, out: Path) -> None:
    save_run(out, result.model, result.fitted_on, result.metrics, history=result.history)
