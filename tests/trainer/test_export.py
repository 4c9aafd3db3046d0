"""Exports agree with the trainer, handle dynamic batch and k, and refuse broken weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from serving.contract import EXCLUDE, ITEMS, SCORES, TOP_K, USER_VECTOR
from trainer.export import export_all, max_history, padded_exclusions
from trainer.exporting import ExportError, load_torchscript
from trainer.models import ALS, BPR, ALSParams, BPRParams, Popularity
from trainer.splits import random_holdout


@pytest.fixture(scope="module")
def split(small_world: Any) -> Any:
    return random_holdout(small_world.interactions)


@pytest.fixture(scope="module")
def exported(split: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    model = BPR(BPRParams(epochs=3)).fit(split.train)  # has an item bias: the harder case
    directory = tmp_path_factory.mktemp("export")
    report = export_all(model, split.train.to_csr(), directory)
    assert report.ok
    assert report.users_checked == min(200, split.train.n_users)
    return model, directory


def _vectors(directory: Path, users: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The rows the lookup would send for ``users`` (-1: the fallback pseudo-user)."""
    table: np.ndarray[Any, Any] = np.load(directory / "users.npy")
    rows: np.ndarray[Any, Any] = table[np.where(users >= 0, users, len(table) - 1)]
    return rows


def _run_both(
    directory: Path, inputs: tuple[np.ndarray[Any, Any], ...]
) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    scripted = load_torchscript(directory / "model.pt")
    with torch.inference_mode():
        ts = [t.numpy() for t in scripted(*(torch.from_numpy(a) for a in inputs))]
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run([SCORES, ITEMS], dict(zip((USER_VECTOR, EXCLUDE, TOP_K), inputs, strict=True)))
    return [(ts[0], ts[1]), (onnx[0], onnx[1])]


@pytest.mark.parametrize(("batch", "k", "extra_width"), [(1, 1, 0), (7, 10, 5), (3, 57, 0)])
def test_dynamic_batch_k_and_width_match_the_trainer(
    exported: Any, split: Any, batch: int, k: int, extra_width: int
) -> None:
    model, directory = exported
    history = split.train.to_csr()
    users = np.arange(batch, dtype=np.int64)
    width = max_history(history) + extra_width
    inputs = (_vectors(directory, users), padded_exclusions(history, users, width), np.full((batch, 1), k))
    ref_items, ref_scores = model.recommend(users, k, exclude=history)
    for scores, items in _run_both(directory, inputs):
        assert items.shape == (batch, k)
        np.testing.assert_array_equal(items, ref_items)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_batch_takes_the_largest_k(exported: Any, split: Any) -> None:
    _, directory = exported
    history = split.train.to_csr()
    users = np.array([0, 1], dtype=np.int64)
    inputs = (_vectors(directory, users), padded_exclusions(history, users, max_history(history)), np.array([[3], [8]]))
    for _, items in _run_both(directory, inputs):
        assert items.shape == (2, 8)


def test_unknown_user_gets_the_popularity_fallback(exported: Any, split: Any) -> None:
    _, directory = exported
    width = max_history(split.train.to_csr())
    inputs = (_vectors(directory, np.array([-1])), np.full((1, width), -1, dtype=np.int64), np.array([[10]]))
    expected, _ = Popularity().fit(split.train).recommend([0], 10)
    for scores, items in _run_both(directory, inputs):
        counts = np.bincount(split.train.items, minlength=split.train.n_items)
        np.testing.assert_array_equal(counts[items[0]], counts[expected[0]])
        assert (np.diff(scores[0]) <= 0).all()


def test_excluded_items_never_come_back(exported: Any, split: Any) -> None:
    _, directory = exported
    history = split.train.to_csr()
    users = np.arange(20, dtype=np.int64)
    n_items = split.train.n_items
    inputs = (
        _vectors(directory, users),
        padded_exclusions(history, users, max_history(history)),
        np.full((20, 1), n_items),
    )
    for _, items in _run_both(directory, inputs):
        for row, user in enumerate(users):
            heard = set(history[user].indices.tolist())
            shown = [i for i in items[row].tolist() if i >= 0]
            assert not heard & set(shown)
            assert len(shown) == n_items - len(heard)  # the rest is padding (-1)


def test_nan_weights_are_refused_and_named(split: Any, tmp_path: Path) -> None:
    model = ALS(ALSParams(iterations=2)).fit(split.train)
    model.item_factors[3, 5] = float("nan")
    with pytest.raises(ExportError, match="item_factors has 1 NaN/inf"):
        export_all(model, split.train.to_csr(), tmp_path)
    assert not any(tmp_path.iterdir())


def test_only_factor_models_export(split: Any, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a factor model"):
        export_all(Popularity().fit(split.train), split.train.to_csr(), tmp_path)  # type: ignore[arg-type]


def test_bpr_export_has_no_fold_in_data_and_als_has_it(exported: Any, split: Any, tmp_path: Path) -> None:
    _, directory = exported
    assert (directory / "users.npy").exists()
    assert not (directory / "fold_in.npz").exists()  # BPR has no closed-form user step
    als = ALS(ALSParams(iterations=2)).fit(split.train)
    export_all(als, split.train.to_csr(), tmp_path)
    assert (tmp_path / "fold_in.npz").exists()


def test_parity_accepts_tied_items_in_either_order_but_not_a_wrong_id() -> None:
    """Regression (the drift benchmark's world): items with identical factors tie exactly, ONNX's TopK ordered
    them differently from torch's, and publish refused a correct export."""
    from trainer.exporting import compare

    full = np.array([[0.9, 0.5, 0.5, 0.1]], dtype=np.float32)  # the reference's own scores of items 0..3

    def score_of(items: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        return np.take_along_axis(full, np.maximum(items, 0), axis=1)

    reference = (np.array([[0.9, 0.5, 0.5]], np.float32), np.array([[0, 1, 2]]))
    swapped = (np.array([[0.9, 0.5, 0.5]], np.float32), np.array([[0, 2, 1]]))
    assert not compare(reference, {"onnx": swapped}).ok  # strict without the reference's scores
    assert compare(reference, {"onnx": swapped}, score_of=score_of).ok
    wrong = (np.array([[0.9, 0.5, 0.5]], np.float32), np.array([[0, 1, 3]]))  # same scores, another item
    assert not compare(reference, {"onnx": wrong}, score_of=score_of).ok
