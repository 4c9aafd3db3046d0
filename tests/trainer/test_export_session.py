"""GRU4Rec's exported scorers agree with the trainer, handle dynamic batch and k, and refuse broken weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from serving.contract import ITEM_SEQUENCE, ITEMS, SCORES, TOP_K
from trainer.export_session import export_session_all, parity_sequences
from trainer.exporting import ExportError, load_torchscript
from trainer.models.gru4rec import GRU4Rec, GRU4RecParams
from trainer.sessions import PAD

MAX_LEN = 8


@pytest.fixture(scope="module")
def model(small_world: Any) -> GRU4Rec:
    params = GRU4RecParams(layers=(24,), n_sample=128, n_epochs=1, max_sequence_length=MAX_LEN)
    return GRU4Rec(params).fit(small_world.interactions)


@pytest.fixture(scope="module")
def exported(model: GRU4Rec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("session-export")
    result = export_session_all(model, directory)
    assert result.parity.ok
    assert result.max_len == MAX_LEN
    assert result.parity.users_checked >= 100
    return directory


def _run_both(directory: Path, sequences: np.ndarray[Any, Any], k: np.ndarray[Any, Any]) -> list[tuple[Any, Any]]:
    scripted = load_torchscript(directory / "model.pt")
    with torch.inference_mode():
        ts = [t.numpy() for t in scripted(torch.from_numpy(sequences), torch.from_numpy(k))]
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run([SCORES, ITEMS], {ITEM_SEQUENCE: sequences, TOP_K: k})
    return [(ts[0], ts[1]), (onnx_out[0], onnx_out[1])]


@pytest.mark.parametrize(("batch", "k"), [(1, 1), (7, 10), (3, 57)])
def test_dynamic_batch_and_k_match_the_trainer(model: GRU4Rec, exported: Path, batch: int, k: int) -> None:
    sequences = parity_sequences(model, MAX_LEN, sample=batch + 4, seed=batch)[:batch]
    ref_items, ref_scores = model.recommend_sequences(sequences, k)
    for scores, items in _run_both(exported, sequences, np.full((batch, 1), k, dtype=np.int64)):
        assert items.shape == (batch, k)
        np.testing.assert_array_equal(items, ref_items)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_the_plays_never_come_back(model: GRU4Rec, exported: Path) -> None:
    sequences = model.user_sequences[:20, :MAX_LEN]
    n_items = model.n_items
    for _, items in _run_both(exported, sequences, np.full((20, 1), n_items, dtype=np.int64)):
        for row, seq in enumerate(sequences):
            heard = set(seq[seq >= 0].tolist())
            shown = [i for i in items[row].tolist() if i >= 0]
            assert not heard & set(shown)
            assert len(shown) == len(set(shown)) == int(model.known_items.sum()) - len(heard)


def test_an_empty_sequence_gets_the_popularity_fallback(model: GRU4Rec, exported: Path) -> None:
    empty = np.full((1, MAX_LEN), PAD, dtype=np.int64)
    counts = model.item_counts
    for scores, items in _run_both(exported, empty, np.array([[10]])):
        assert counts[items[0]].tolist() == sorted(counts.tolist(), reverse=True)[:10]
        assert (np.diff(scores[0]) < 0).all()


def test_onnx_fixes_the_sequence_length_and_leaves_the_batch_free(exported: Path) -> None:
    graph = onnx.load(str(exported / "model.onnx")).graph
    sequence = next(i for i in graph.input if i.name == ITEM_SEQUENCE)
    batch_dim, length_dim = sequence.type.tensor_type.shape.dim
    assert batch_dim.dim_param  # symbolic
    assert length_dim.dim_value == MAX_LEN
    assert [o.name for o in graph.output] == [SCORES, ITEMS]


def test_stacked_layers_and_a_separate_embedding_export(small_world: Any, tmp_path: Path) -> None:
    params = GRU4RecParams(
        layers=(12, 10), embedding=6, constrained_embedding=False, n_sample=64, n_epochs=1, max_sequence_length=4
    )
    model = GRU4Rec(params).fit(small_world.interactions)
    result = export_session_all(model, tmp_path, k=25)
    assert result.parity.ok
    assert max(result.parity.max_abs_score_diff.values()) <= 1e-5


def test_nan_weights_are_refused_and_named(model: GRU4Rec, tmp_path: Path) -> None:
    broken = GRU4Rec(model.params)
    broken.n_users, broken.n_items = model.n_users, model.n_items
    broken._restore(model._state())
    assert broken.net is not None
    cell = broken.net.G[0]
    assert isinstance(cell, torch.nn.GRUCell)
    with torch.no_grad():
        cell.weight_hh[2, 3] = float("inf")
    with pytest.raises(ExportError, match=r"G\.0\.weight_hh has 1 NaN/inf"):
        export_session_all(broken, tmp_path)
    assert not any(tmp_path.iterdir())
