"""Warm start: factor models start from given factors, and a retrain continues from a base run by external id."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.core.errors import ConfigError
from trainer.artifacts import Run, load_run, save_run
from trainer.data.interactions import IdMap, Interactions, from_frame
from trainer.evaluation import evaluate
from trainer.models import ALS, BPR, ALSParams, BPRParams, Params, Popularity
from trainer.models.base import FactorModel
from trainer.splits import random_holdout
from trainer.warm import align_rows, base_positions, default_fraction, warm_params, warm_start

ALS_PARAMS = ALSParams(factors=16, iterations=10, regularization=5.0)
BPR_PARAMS = BPRParams(factors=16, epochs=30)


@pytest.fixture(scope="module")
def moved(small_world) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The small world split once; the base run's data is the training part without 30 listeners and 40 items
    (they arrive later), with external ids shuffled into a different order than the retrain's."""
    split = random_holdout(small_world.interactions)
    train = split.train
    users = train.user_ids.external(train.users)
    items = train.item_ids.external(train.items)
    late_users = train.user_ids.ids[-30:]
    late_items = train.item_ids.ids[:40]
    old = ~np.isin(users, late_users) & ~np.isin(items, late_items)
    # String ids on the base side: the base run was trained on a table, the retrain reads integer ids.
    frame = pd.DataFrame({"user": users[old].astype(str), "item": items[old].astype(str), "weight": train.weights[old]})
    base, _ = from_frame(frame)
    return {"train": train, "test": split.test, "base": base}


def _run(model: FactorModel, data: Interactions) -> Run:
    return Run(model, data.user_ids, data.item_ids, None, data.to_csr(), {})


def _cosine(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    result: np.ndarray[Any, Any] = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return result


def test_a_fit_from_its_own_cold_start_is_the_cold_fit(small_world) -> None:  # type: ignore[no-untyped-def]
    """``fit(initial=...)`` did not exist: a warm start had nothing to start from."""
    data = small_world.interactions
    cases: list[tuple[type[FactorModel], Params]] = [
        (ALS, ALSParams(factors=8, iterations=2)),
        (BPR, BPRParams(factors=8, epochs=2)),
    ]
    for model_type, params in cases:
        cold = model_type(params).fit(data)
        start = model_type(params).cold_factors(data.n_users, data.n_items)
        again = model_type(params).fit(data, initial=start)
        np.testing.assert_array_equal(cold.factors()[0], again.factors()[0])
        np.testing.assert_array_equal(cold.factors()[1], again.factors()[1])


def test_initial_factors_of_the_wrong_shape_are_refused(small_world) -> None:  # type: ignore[no-untyped-def]
    data = small_world.interactions
    start = ALS(ALSParams(factors=8)).cold_factors(data.n_users - 1, data.n_items)
    with pytest.raises(ConfigError, match=r"initial user factors have shape \(299, 8\), the fit needs \(300, 8\)"):
        ALS(ALSParams(factors=8, iterations=1)).fit(data, initial=start)
    start = BPR(BPRParams(factors=8)).cold_factors(data.n_users, data.n_items)
    with pytest.raises(ConfigError, match=r"initial user factors have shape \(300, 8\), the fit needs \(300, 4\)"):
        BPR(BPRParams(factors=4, epochs=1)).fit(data, initial=start)


def test_positions_follow_external_ids_across_types_and_orders() -> None:
    base = IdMap(np.array(["7", "3", "11"]))
    new = IdMap(np.array([3, 5, 7, 11]))
    positions = base_positions(base, new)
    assert positions.tolist() == [1, -1, 0, 2]
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    fill = np.full((4, 2), -1.0, dtype=np.float32)
    np.testing.assert_array_equal(align_rows(rows, positions, fill), [[2, 3], [-1, -1], [0, 1], [4, 5]])
    with pytest.raises(ConfigError, match="3 positions for 4 rows"):
        align_rows(rows, positions[:3], fill)


def test_warm_params_scale_the_passes_and_refuse_other_models() -> None:
    assert warm_params(ALSParams(iterations=15), "als", 0.2) == ALSParams(iterations=3)
    assert warm_params(BPRParams(epochs=60), "bpr", 0.2) == BPRParams(epochs=12)
    assert warm_params(BPRParams(epochs=2), "bpr", 0.1) == BPRParams(epochs=1)
    assert warm_params(ALSParams(iterations=15), "als", default_fraction("als")) == ALSParams(iterations=2)
    with pytest.raises(ConfigError, match="fraction"):
        warm_params(ALSParams(), "als", 0.0)
    with pytest.raises(ConfigError, match="cannot be warm-started"):
        warm_params(ALSParams(), "gru4rec", 0.5)


@pytest.mark.parametrize(("model_type", "params"), [(ALS, ALS_PARAMS), (BPR, BPR_PARAMS)])
def test_warm_start_keeps_known_vectors_and_learns_new_ones(
    moved: dict[str, Any], model_type: type[FactorModel], params: Any, tmp_path: Any
) -> None:
    train, test, base = moved["train"], moved["test"], moved["base"]
    base_model = model_type(params).fit(base)
    save_run(tmp_path / "base", base_model, base, {})  # through the files, as a published run is read
    warm = warm_start(load_run(tmp_path / "base"), train, fraction=0.3)

    assert (warm.new_users, warm.known_users) == (30, train.n_users - 30)
    assert warm.new_items == 40
    passes = "iterations" if model_type is ALS else "epochs"
    assert getattr(warm.model.params, passes) == (3 if model_type is ALS else 9)
    positions = base_positions(base.user_ids, train.user_ids)
    known = positions >= 0
    new_vectors = warm.model.factors()[0][~known]
    base_vectors = base_model.factors()[0][positions[known]]
    # Known listeners stay where the base run put them (same basis: no rotation, no re-learning from scratch) ...
    assert np.median(_cosine(warm.model.factors()[0][known], base_vectors)) > 0.9
    # ... and new ones got vectors of their own, away from the random start.
    cold_start = warm.model.cold_factors(train.n_users, train.n_items).user_factors[~known]
    assert np.median(_cosine(new_vectors, cold_start)) < 0.9
    if model_type is ALS:  # solved outright in the first half-sweep: far from the tiny start
        assert np.linalg.norm(new_vectors, axis=1).mean() > 3 * np.linalg.norm(cold_start, axis=1).mean()

    cold = model_type(params).fit(train)
    warm_ndcg = evaluate(warm.model, train, test)["ndcg@10"]
    cold_ndcg = evaluate(cold, train, test)["ndcg@10"]
    popular = evaluate(Popularity().fit(train), train, test)["ndcg@10"]
    assert warm_ndcg > 1.5 * popular
    assert warm_ndcg > 0.9 * cold_ndcg
    assert warm.summary()["new_items"] == 40


def test_warm_start_refuses_other_models_and_other_sizes(moved: dict[str, Any]) -> None:
    train, base = moved["train"], moved["base"]
    popularity = Popularity().fit(base)
    with pytest.raises(ConfigError, match="a popularity run cannot be warm-started"):
        warm_start(Run(popularity, base.user_ids, base.item_ids, None, base.to_csr(), {}), train)
    als = ALS(dataclasses.replace(ALS_PARAMS, iterations=1)).fit(base)
    with pytest.raises(ConfigError, match=r"keeps the base run's factors \(16\)"):
        warm_start(_run(als, base), train, params={"factors": 32})
    explicit = warm_start(_run(als, base), train, params={"iterations": 2, "regularization": 1.0})
    assert explicit.model.params.iterations == 2  # type: ignore[attr-defined]
    assert explicit.model.params.regularization == 1.0  # type: ignore[attr-defined]
