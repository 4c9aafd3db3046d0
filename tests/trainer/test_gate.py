"""The retraining gate: a candidate is compared with the served model on the newest window and refused, with a
reason, when it is worse, broken, or when the window says nothing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from recsys.core.errors import ConfigError
from trainer.gate import Ranker, Window, as_strings, gate, window_metrics
from trainer.models import ALS, ALSParams, Popularity
from trainer.splits import make_split


@pytest.fixture(scope="module")
def parts(small_world: Any) -> Any:
    return make_split(small_world.interactions, "temporal")


@pytest.fixture(scope="module")
def window(parts: Any) -> Window:
    test = parts.test
    return Window(as_strings(test.user_ids.external(test.users)), as_strings(test.item_ids.external(test.items)))


def _ranker(model: Any, parts: Any) -> Ranker:
    return Ranker(model, parts.train.user_ids, parts.train.item_ids, parts.train.to_csr())


def test_the_served_model_against_a_retrained_one_passes(parts: Any, window: Window) -> None:
    served = _ranker(ALS(ALSParams(factors=16, iterations=6, seed=1)).fit(parts.train), parts)
    candidate = _ranker(ALS(ALSParams(factors=16, iterations=6, seed=2)).fit(parts.train), parts)
    report = gate(served, candidate, window, tolerance=0.2)
    assert report.passed, report.reason
    assert report.served["users"] >= 20
    assert 0 < report.candidate["ndcg@10"] <= 1


def test_a_worse_candidate_is_refused_with_the_figures(parts: Any, window: Window) -> None:
    served = _ranker(ALS(ALSParams(factors=16, iterations=6)).fit(parts.train), parts)
    candidate = _ranker(Popularity().fit(parts.train), parts)
    report = gate(served, candidate, window, tolerance=0.05)
    assert not report.passed
    assert "below the served" in report.reason
    assert report.candidate["ndcg@10"] < report.served["ndcg@10"]


def test_nan_weights_and_an_empty_window_are_refused(parts: Any, window: Window) -> None:
    good = ALS(ALSParams(factors=8, iterations=2)).fit(parts.train)
    broken = ALS(ALSParams(factors=8, iterations=2)).fit(parts.train)
    broken.item_factors = broken.item_factors.clone()
    broken.item_factors[3, 0] = torch.nan
    report = gate(_ranker(good, parts), _ranker(broken, parts), window)
    assert not report.passed
    assert "item factors hold NaN/inf" in report.reason
    quiet = Window(window.users[:3], window.items[:3])
    report = gate(_ranker(good, parts), _ranker(good, parts), quiet)
    assert not report.passed
    assert "no evidence" in report.reason
    with pytest.raises(ConfigError, match="tolerance"):
        gate(_ranker(good, parts), _ranker(good, parts), window, tolerance=1.5)


def test_skips_in_the_window_are_counted_as_negatives(parts: Any, window: Window) -> None:
    model = ALS(ALSParams(factors=8, iterations=3)).fit(parts.train)
    ranker = _ranker(model, parts)
    users = sorted(set(window.users))[:30]
    tops = ranker.top(users, 10)
    skipped = Window(window.users, window.items, [u for u in users for _ in range(2)], [i for t in tops for i in t[:2]])
    metrics = window_metrics(ranker, users, skipped, k=10)
    assert metrics["skipped@10"] == pytest.approx(0.2, abs=0.05)  # 2 of 10 slots, for users with relevant items
    assert np.isfinite(list(metrics.values())).all()
