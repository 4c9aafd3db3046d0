"""The gpu flavour's parts that a CPU can check: the device scorer's answers (fp16 candidates on CPU torch), its
reading of both published formats, and the configs ``gpu_config`` renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.contract import EXCLUDE, TOP_K, USER_VECTOR
from serving.gpu import DeviceScorer, candidate_error, load_weights
from serving.lookup import UserLookup
from trainer.artifacts import load_run
from trainer.export import FactorScorer, export_all
from trainer.pipeline import save_result, train_and_evaluate
from trainer.triton.configs import Flavour
from trainer.triton.family import FACTOR, SESSION
from trainer.triton.gpu import gpu_config, is_factor_scorer, is_fused


def _reference(scorer: FactorScorer, *arrays: npt.NDArray[Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    with torch.inference_mode():
        scores, items = scorer(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
    return scores.numpy(), items.numpy()


def _assert_same_answer(
    got: tuple[npt.NDArray[Any], npt.NDArray[Any]], ref: tuple[npt.NDArray[Any], npt.NDArray[Any]]
) -> None:
    """Scores to fp32 rounding; ids identical except between entries whose scores are equal (a tie has no order)."""
    (scores, items), (ref_scores, ref_items) = got, ref
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-5)
    finite = np.where(np.isfinite(ref_scores), ref_scores, 0.0)
    tied = np.zeros(ref_scores.shape, dtype=bool)
    close = np.isclose(finite[:, 1:], finite[:, :-1], rtol=1e-6, atol=0.0)
    tied[:, 1:] |= close
    tied[:, :-1] |= close
    np.testing.assert_array_equal(np.where(tied, -2, items), np.where(tied, -2, ref_items))
    for row in range(len(items)):  # a tie may swap ids, never replace them
        assert sorted(items[row].tolist()) == sorted(ref_items[row].tolist()) or tied[row].any()


def _world(
    n_items: int, dim: int, seed: int, *, fallback_scale: float
) -> tuple[FactorScorer, npt.NDArray[Any], npt.NDArray[Any]]:
    gen = torch.Generator().manual_seed(seed)
    scorer = FactorScorer(
        torch.randn(n_items, dim, generator=gen) * 0.1,
        torch.randn(n_items, generator=gen) * 0.01,
        torch.rand(n_items, generator=gen) * fallback_scale,
    ).eval()
    rng = np.random.default_rng(seed)
    users = np.zeros((64, dim + 1), np.float32)
    users[:, :dim] = rng.standard_normal((64, dim)) * 0.1
    users[-4:] = 0.0
    users[-4:, -1] = 1.0  # fallback pseudo-users
    exclude = rng.integers(-1, n_items, (64, 25))
    return scorer, users, exclude


@pytest.mark.parametrize("k", [1, 10, 100])
def test_fp16_candidates_give_the_fp32_answer(k: int) -> None:
    # Popularity counts up to 1e6 in the fallback column: plain fp16 would overflow (max 65504).
    scorer, users, exclude = _world(20_000, 16, 0, fallback_scale=1e6)
    device = DeviceScorer(scorer.items_t, scorer.bias, scorer.n_items, "cpu", precision="fp16")
    top_k = np.full((64, 1), k)
    _assert_same_answer(device(users, exclude, top_k), _reference(scorer, users, exclude, top_k))
    assert device.stats["rows"] == 64


def test_rows_that_cannot_be_proven_are_scored_again_in_fp32() -> None:
    # Every item scores the same for the fallback user: no cut can be proven, so those rows take the full pass.
    scorer = FactorScorer(torch.randn(5_000, 8) * 0.1, None, torch.ones(5_000)).eval()
    device = DeviceScorer(scorer.items_t, scorer.bias, scorer.n_items, "cpu", precision="fp16")
    users = np.zeros((3, 9), np.float32)
    users[:, -1] = 1.0
    scores, items = device(users, np.full((3, 1), -1), np.full((3, 1), 10))
    assert device.stats["full_rows"] == 3
    assert (scores == 1.0).all()
    assert (items >= 0).all()


def test_small_catalogues_and_exhausted_rows_match_the_export() -> None:
    scorer = FactorScorer(torch.randn(5, 4), None, torch.rand(5)).eval()
    device = DeviceScorer(scorer.items_t, scorer.bias, scorer.n_items, "cpu", precision="fp16")
    users = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    exclude = np.array([[0, 1, 2], [-1, -1, -1], [4, 3, -1]])
    top_k = np.array([[4], [9], [2]])  # k is clamped to the catalogue (5)
    ref_scores, ref_items = _reference(scorer, users, exclude, top_k)
    scores, items = device(users, exclude, top_k)
    np.testing.assert_array_equal(items, ref_items)
    assert items[0, -2:].tolist() == [-1, -1]  # three of five items excluded
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_candidate_error_bounds() -> None:
    assert 1.4e-3 < candidate_error("fp16", 72) < 3e-3
    assert candidate_error("fp32", 72) < 2e-5


@pytest.fixture(scope="module")
def published(small_world: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("export")
    save_result(train_and_evaluate(small_world.interactions, "bpr", {"epochs": 2}), directory)
    run = load_run(directory)
    export_all(run.model, run.history, directory)  # type: ignore[arg-type]
    return directory


def test_both_formats_hold_the_same_weights(published: Path) -> None:
    ts_items, ts_bias, ts_n = load_weights(published, "torchscript")
    onnx_items, onnx_bias, onnx_n = load_weights(published, "onnx")
    assert ts_n == onnx_n
    assert torch.equal(ts_items, onnx_items)
    assert torch.equal(ts_bias, onnx_bias)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_device_scorer_serves_the_published_version(published: Path, fmt: str) -> None:
    run = load_run(published)
    users = [str(u) for u in run.user_ids.ids[:20].tolist()] + ["stranger"]
    vectors, exclude, _ = UserLookup(published)(users)
    top_k = np.full((len(users), 1), 7)
    scorer = DeviceScorer.load(published, fmt, "cpu")
    scores, items = scorer(vectors, exclude, top_k)
    from serving.scorer import Scorer

    reference = Scorer(published, fmt, (USER_VECTOR, EXCLUDE, TOP_K))(vectors, exclude, top_k)
    _assert_same_answer((scores, items), reference)  # the stranger's popularity counts tie


def test_gpu_config_moves_the_factor_scorers_and_fused_model_to_the_gpu() -> None:
    local = {c.name: c for c in FACTOR.configs(Flavour.local)}
    gpu = {c.name: c for c in FACTOR.configs(Flavour.gpu)}
    assert set(local) == set(gpu)
    for name, config in gpu.items():
        kinds = {g.kind for g in config.instance_group}
        if is_factor_scorer(local[name]) or is_fused(local[name]):
            assert kinds == {mc.ModelInstanceGroup.KIND_GPU}, name
            assert config.parameters["precision"].string_value == "fp16"
            assert config.parameters["format"].string_value == local[name].parameters["format"].string_value
        else:
            assert kinds <= {mc.ModelInstanceGroup.KIND_CPU}, name
        # Everything the ensembles wire together is untouched.
        assert config.input == local[name].input
        assert config.output == local[name].output
        assert config.ensemble_scheduling == local[name].ensemble_scheduling
    assert {n for n, c in local.items() if is_factor_scorer(c)} == {"recsys_scorer_torchscript", "recsys_scorer_onnx"}
    assert {n for n, c in local.items() if is_fused(c)} == {"recsys_fused"}


def test_gpu_config_returns_a_copy_and_leaves_the_session_scorer_alone() -> None:
    for config in SESSION.configs(Flavour.local):
        before = config.SerializeToString()
        out = gpu_config(config)
        assert config.SerializeToString() == before
        assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in out.instance_group)
        assert out.parameters == config.parameters


def test_rendered_gpu_configs_parse(tmp_path: Path) -> None:
    from trainer.triton.repository import render_repository

    paths = render_repository(tmp_path, Flavour.gpu)
    assert paths
    scorer = text_format.Parse((tmp_path / "recsys_scorer_onnx" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert scorer.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
