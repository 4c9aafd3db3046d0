"""Train → evaluate → save → load, through the same functions the CLI uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.core.errors import ArtifactError
from trainer.artifacts import load_run
from trainer.pipeline import save_result, train_and_evaluate
from trainer.tune import tune


def test_run_round_trip(small_world: Any, tmp_path: Path) -> None:
    result = train_and_evaluate(small_world.interactions, "als", {"iterations": 5}, source="synthetic")
    assert result.metrics["ndcg@10"] > result.metrics["baseline_popularity"]["ndcg@10"]
    save_result(result, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.metrics["model"] == "als"
    assert run.user_ids.to_list() == result.split.train.user_ids.to_list()
    users = np.arange(10)
    a, _ = run.model.recommend(users, 10, exclude=run.history)
    b, _ = result.model.recommend(users, 10, exclude=run.history)
    np.testing.assert_array_equal(a, b)
    # What serving excludes is every known play, held-out part included.
    assert run.history.nnz == len(result.split.train) + len(result.split.test)
    assert run.item_label(0).startswith("genre")


def test_refit_serves_all_pairs(small_world: Any) -> None:
    result = train_and_evaluate(small_world.interactions, "popularity", refit=True)
    assert len(result.fitted_on) == len(result.split.train) + len(result.split.test)


def test_gru4rec_refit_keeps_the_plays_and_publishes(small_world: Any, tmp_path: Path) -> None:
    """Regression: ``recsys train --model gru4rec --refit`` trained, then failed with "session models need
    timestamped plays (events)": the refit union of train and test dropped the events."""
    from trainer.triton.publish import publish

    params = {"layers": [16], "n_sample": 32, "batch_size": 32, "n_epochs": 1, "max_sequence_length": 8}
    result = train_and_evaluate(small_world.interactions, "gru4rec", params, split="temporal", refit=True)
    events = result.fitted_on.events
    assert events is not None
    assert len(events) == len(result.split.train.events) + len(result.split.test.events)  # type: ignore[arg-type]
    keys = events.users.astype(np.int64) * (1 << 32) + events.timestamps
    assert (np.diff(keys) >= 0).all()  # still in (user, time) order
    save_result(result, tmp_path / "run")
    assert publish(tmp_path / "run", tmp_path / "repo").family.name == "session"


def test_temporal_split_runs_on_timestamped_data(small_world: Any) -> None:
    result = train_and_evaluate(small_world.interactions, "als", {"iterations": 3}, split="temporal")
    assert result.metrics["split"] == "temporal"
    assert 0.0 <= result.metrics["ndcg@10"] <= 1.0


def test_missing_run_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(ArtifactError, match=r"missing model\.npz"):
        load_run(tmp_path / "run")


def test_tune_finds_parameters_on_validation(small_world: Any) -> None:
    from trainer.splits import random_holdout

    train = random_holdout(small_world.interactions).train
    result = tune(train, "als", n_trials=3, fixed={"iterations": 3})
    assert result.best_params["iterations"] == 3
    assert len(result.trials) == 3
    assert result.best_value == max(t["value"] for t in result.trials)
