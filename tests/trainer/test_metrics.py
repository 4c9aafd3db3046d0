"""Metrics against hand-worked cases and against a naive per-user implementation of the same definitions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.metrics import coverage_at_k, hit_matrix, mean_popularity_at_k, ranking_metrics


def _relevant(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    users, items = zip(*data, strict=True) if data else ((), ())
    return sp.csr_matrix((np.ones(len(data)), (users, items)), shape=(len(rows), n_items))


def test_perfect_ranking_scores_one() -> None:
    rel = _relevant([[0, 1], [2]], 5)
    top = np.array([[1, 0, 3], [2, 4, 3]])
    m = ranking_metrics(top, [0, 1], rel, np.zeros(5), ks=(3,))
    assert m["ndcg@3"] == pytest.approx(1.0)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["map@3"] == pytest.approx(1.0)


def test_hand_worked_values() -> None:
    # One user, relevant {2, 7}; ranking hits at positions 2 and 4 (1-based).
    rel = _relevant([[2, 7]], 10)
    top = np.array([[5, 2, 9, 7]])
    m = ranking_metrics(top, [0], rel, np.zeros(10), ks=(4,))
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@4"] == pytest.approx(dcg / idcg)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_recall_denominator_is_min_k_and_relevant() -> None:
    rel = _relevant([list(range(10))], 20)
    top = np.array([[0, 1, 15]])
    m = ranking_metrics(top, [0], rel, np.zeros(20), ks=(3,))
    assert m["recall@3"] == pytest.approx(2 / 3)


def test_padding_never_hits() -> None:
    rel = _relevant([[0]], 3)
    hits = hit_matrix(np.array([[-1, 0]]), rel, [0])
    assert hits.tolist() == [[False, True]]


def test_coverage_and_popularity() -> None:
    top = np.array([[0, 1], [1, 2]])
    assert coverage_at_k(top, 10, 2) == pytest.approx(0.3)
    assert coverage_at_k(top, 10, 1) == pytest.approx(0.2)
    pop = np.linspace(0, 1, 10)
    assert mean_popularity_at_k(top, pop, 2) == pytest.approx(pop[[0, 1, 1, 2]].mean())


def _naive(top: np.ndarray[Any, Any], relevant: list[set[int]], k: int) -> tuple[float, float, float]:
    ndcgs, recalls, aps = [], [], []
    for row, rel in zip(top, relevant, strict=True):
        gains = [1.0 if int(i) in rel else 0.0 for i in row[:k]]
        dcg = sum(g / math.log2(p + 2) for p, g in enumerate(gains))
        idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(rel))))
        ndcgs.append(dcg / idcg if idcg else 0.0)
        recalls.append(sum(gains) / max(min(k, len(rel)), 1))
        hits, ap = 0, 0.0
        for p, g in enumerate(gains):
            if g:
                hits += 1
                ap += hits / (p + 1)
        aps.append(ap / max(min(k, len(rel)), 1))
    return float(np.mean(ndcgs)), float(np.mean(recalls)), float(np.mean(aps))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 8))
def test_vectorized_equals_naive(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items = 7, 15
    relevant = [set(rng.choice(n_items, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(n_users)]
    top = np.stack([rng.permutation(n_items)[:8] for _ in range(n_users)])
    m = ranking_metrics(
        top, np.arange(n_users), _relevant([sorted(r) for r in relevant], n_items), np.zeros(n_items), (k,)
    )
    ndcg, recall, ap = _naive(top, relevant, k)
    assert m[f"ndcg@{k}"] == pytest.approx(ndcg)
    assert m[f"recall@{k}"] == pytest.approx(recall)
    assert m[f"map@{k}"] == pytest.approx(ap)
    for key in (f"ndcg@{k}", f"recall@{k}", f"map@{k}"):
        assert 0.0 <= m[key] <= 1.0
