"""Offline evaluation through the model interface only (as implicit's ``ranking_metrics_at_k`` does)."""

from __future__ import annotations

import numpy as np

from trainer.data.interactions import Interactions
from trainer.metrics import ranking_metrics
from trainer.models.base import Recommender


def evaluate(
    model: Recommender, train: Interactions, test: Interactions, *, ks: tuple[int, ...] = (10, 20)
) -> dict[str, float]:
    """Ranks all items for every user with held-out pairs, excluding their training items."""
    test_matrix = test.to_csr()
    users = np.flatnonzero(np.diff(test_matrix.indptr))
    top_items, _ = model.recommend(users, max(ks), exclude=train.to_csr())
    popularity = np.bincount(train.items, minlength=train.n_items) / max(train.n_users, 1)
    metrics = ranking_metrics(top_items, users, test_matrix, popularity.astype(np.float64), ks)
    metrics["n_eval_users"] = float(len(users))
    return metrics
