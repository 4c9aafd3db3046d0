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


def test_recommend_in_bounded_batches_answers_as_one_batch(split: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: scoring 200 users against 10M items made one 8 GB matrix; recommend now cuts the batch so
    ``batch x n_items`` stays under MAX_SCORE_ELEMENTS, with the same answers."""
    import trainer.models.base as base

    model = BPR(BPRParams(epochs=2)).fit(split.train)
    history = split.train.to_csr()
    users = np.arange(split.train.n_users)
    whole = model.recommend(users, 10, exclude=history)
    assert base.users_per_batch(10_000_000) == 6  # 6 x 10M floats: under 64M
    monkeypatch.setattr(base, "MAX_SCORE_ELEMENTS", 3 * split.train.n_items)  # 3 users a batch
    assert base.users_per_batch(split.train.n_items) == 3
    cut = model.recommend(users, 10, exclude=history)
    np.testing.assert_array_equal(cut[0], whole[0])
    np.testing.assert_allclose(cut[1], whole[1], atol=1e-6)  # a GEMM of another shape rounds differently


def test_parity_in_batches_of_one_user_still_passes_and_still_catches_a_wrong_export(
    exported: Any, split: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import trainer.models.base as base
    from trainer.export import check_parity
    from trainer.exporting import run_exports

    model, directory = exported
    history = split.train.to_csr()
    width = max_history(history)
    monkeypatch.setattr(base, "MAX_SCORE_ELEMENTS", 1)  # every side scores one user at a time
    report = check_parity(model, history, directory / "model.pt", directory / "model.onnx", width)
    assert report.ok
    assert report.users_checked == min(200, split.train.n_users)
    users = np.arange(9, dtype=np.int64)
    inputs = {
        USER_VECTOR: _vectors(directory, users),
        EXCLUDE: padded_exclusions(history, users, width),
        TOP_K: np.full((9, 1), 10, dtype=np.int64),
    }
    whole = run_exports(directory / "model.pt", directory / "model.onnx", inputs)
    by_two = run_exports(directory / "model.pt", directory / "model.onnx", inputs, rows=2)
    for fmt in ("torchscript", "onnx"):
        np.testing.assert_array_equal(by_two[fmt][1], whole[fmt][1])
        np.testing.assert_allclose(by_two[fmt][0], whole[fmt][0], atol=1e-6)
    other = BPR(BPRParams(epochs=2, seed=7)).fit(split.train)  # another model's exports: parity must fail
    export_all(other, history, tmp_path)
    assert not check_parity(model, history, tmp_path / "model.pt", tmp_path / "model.onnx", width).ok


def test_run_exports_in_batches_refuses_rows_asking_different_top_k(tmp_path: Path) -> None:
    """A call answers max(TOP_K) items per row, so batches of other ks gave answers of other widths and a bare
    numpy concatenate error after both exports had run; now a clear error before either loads (no files needed)."""
    from recsys.core.errors import ConfigError
    from trainer.exporting import run_exports

    inputs: dict[str, np.ndarray[Any, Any]] = {
        USER_VECTOR: np.zeros((4, 3), dtype=np.float32),
        EXCLUDE: np.full((4, 1), -1, dtype=np.int64),
        TOP_K: np.array([[10], [10], [5], [10]], dtype=np.int64),
    }
    with pytest.raises(ConfigError, match=r"one top-k for every row, got 2 different \(5, 10\)"):
        run_exports(tmp_path / "model.pt", tmp_path / "model.onnx", inputs, rows=2)


def test_scorer_holds_the_items_once_in_the_served_layout(split: Any) -> None:
    from trainer.export import build_scorer
    from trainer.exporting import weight_bytes

    model = BPR(BPRParams(epochs=1)).fit(split.train)
    _, items, bias = model.factors()
    assert bias is not None
    fallback = np.arange(len(items), dtype=np.float32)
    scorer = build_scorer(model, fallback)
    n, dim = items.shape
    layout = scorer.items_t.numpy()
    assert layout.shape == (dim + 1, n + 1)
    assert scorer.items_t.is_contiguous()
    np.testing.assert_array_equal(layout[:dim, :n], items.T)
    np.testing.assert_allclose(layout[dim, :n], fallback - bias)
    assert not layout[:, n].any()  # the sink column: only its -inf bias matters
    assert weight_bytes(scorer) == 4 * ((dim + 1) * (n + 1) + (n + 1))  # the items once, plus the bias


def test_fold_in_gram_in_blocks_equals_the_whole_product(split: Any) -> None:
    from trainer.export import fold_in_arrays, gram

    rng = np.random.default_rng(0)
    items = rng.standard_normal((1001, 16)).astype(np.float32)
    whole = items.astype(np.float64).T @ items.astype(np.float64)
    np.testing.assert_allclose(gram(items, rows=7), whole, rtol=1e-12, atol=1e-9)
    als = ALS(ALSParams(iterations=1)).fit(split.train)
    arrays = fold_in_arrays(als)
    assert arrays is not None
    factors = als.factors()[1]
    assert np.shares_memory(arrays["item_factors"], factors)  # the model's own array, not a copy
    expected = factors.astype(np.float64).T @ factors.astype(np.float64)
    expected += als.params.regularization * np.eye(factors.shape[1])
    np.testing.assert_allclose(arrays["gram"], expected, rtol=1e-12, atol=1e-9)


def test_non_finite_counts_in_blocks() -> None:
    from trainer.export import non_finite

    array = np.zeros((10, 3), dtype=np.float32)
    array[[0, 4, 9], [1, 2, 0]] = [np.nan, np.inf, -np.inf]
    assert non_finite(array, rows=3) == 3
    assert non_finite(np.array([1.0, np.nan]), rows=1) == 1
    assert non_finite(np.zeros((0, 4))) == 0


def test_large_weights_export_to_onnx_external_data_that_loads_beside_the_graph(
    split: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 17: a 10M x 65 float32 initializer (2.6 GB) is over protobuf's 2 GB; above the threshold the weights
    go to model.onnx.data, named relative, so the pair loads from any folder (a Triton version folder)."""
    import shutil

    import trainer.exporting as exporting
    from trainer.triton.family import ONNX_DATA_FILE

    model = BPR(BPRParams(epochs=1)).fit(split.train)
    history = split.train.to_csr()
    small = tmp_path / "small"
    export_all(model, history, small)
    assert not (small / ONNX_DATA_FILE).exists()  # under the threshold: one self-contained file
    monkeypatch.setattr(exporting, "ONNX_EXTERNAL_DATA_BYTES", 0)
    export_all(model, history, tmp_path / "large")
    data = tmp_path / "large" / ONNX_DATA_FILE
    assert data.stat().st_size > 4 * split.train.n_items * 8  # the items' factors at least
    assert (tmp_path / "large" / "model.onnx").stat().st_size < data.stat().st_size
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("model.onnx", ONNX_DATA_FILE):
        shutil.move(tmp_path / "large" / name, moved / name)
    users = np.arange(5, dtype=np.int64)
    width = max_history(history)
    inputs = (_vectors(small, users), padded_exclusions(history, users, width), np.full((5, 1), 10))
    feeds = dict(zip((USER_VECTOR, EXCLUDE, TOP_K), inputs, strict=True))
    got = ort.InferenceSession(str(moved / "model.onnx"), providers=["CPUExecutionProvider"]).run([ITEMS], feeds)
    want = ort.InferenceSession(str(small / "model.onnx"), providers=["CPUExecutionProvider"]).run([ITEMS], feeds)
    np.testing.assert_array_equal(got[0], want[0])
