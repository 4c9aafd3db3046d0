"""The gpu flavour served by the real Triton, on CPU instances: what a GPU node runs, minus the GPU.

The repository is rendered as the gpu flavour, then each ``KIND_GPU`` group becomes a CPU instance with
``device_scorer=true`` (``benchmarks.gpu_serving.cpu_instances``), so the stubs run ``serving.gpu.DeviceScorer``
(the GPU code path, on CPU torch) inside ``recsys_scorer_*`` and ``recsys_fused``; their answers must be the
trainer's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from benchmarks.gpu_serving import cpu_instances
from recsys.core.triton_client import TritonRecommender
from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer
from trainer.artifacts import load_run
from trainer.pipeline import save_result, train_and_evaluate
from trainer.triton.configs import Flavour
from trainer.triton.family import ENSEMBLE_A, ENSEMBLE_B, FUSED, SCORER_ONNX, SCORER_TORCHSCRIPT
from trainer.triton.publish import publish
from trainer.triton.repository import load_all, render_repository


@pytest.fixture(scope="module")
def run_dir(small_world: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("run")
    save_result(train_and_evaluate(small_world.interactions, "bpr", {"epochs": 3, "seed": 1}), directory)
    return directory


@pytest.fixture(scope="module")
def client(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonRecommender]:
    repository = tmp_path_factory.mktemp("repo")
    render_repository(repository, Flavour.gpu)
    cpu_instances(repository)
    publish(run_dir, repository)  # keeps the configs already there
    with TritonServer(TritonConfig(model_repository=repository, ports=TritonPorts.auto())) as triton:
        load_all(triton, repository)
        recommender = TritonRecommender(triton.urls.grpc)
        yield recommender
        recommender.close()


def test_the_cpu_test_repository_runs_the_device_scorer(tmp_path: Path) -> None:
    render_repository(tmp_path, Flavour.gpu)
    cpu_instances(tmp_path)
    for name in (SCORER_TORCHSCRIPT, SCORER_ONNX, FUSED):
        config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert config.parameters["device_scorer"].string_value == "true"
        assert config.parameters["precision"].string_value == "fp16"


@pytest.mark.parametrize("model", [ENSEMBLE_A, ENSEMBLE_B, FUSED])
def test_device_scorer_serves_the_trainers_top10(client: TritonRecommender, run_dir: Path, model: str) -> None:
    run = load_run(run_dir)
    users = np.arange(60)
    expected_items, expected_scores = run.model.recommend(users, 10, exclude=run.history)
    external = [str(u) for u in run.user_ids.external(users).tolist()]
    for row, answer in enumerate(client.recommend(model, external, top_k=10)):
        np.testing.assert_allclose(answer.scores, expected_scores[row], atol=1e-5)
        expected = [str(i) for i in run.item_ids.external(expected_items[row]).tolist()]
        if len(set(np.round(expected_scores[row], 5))) == len(expected):  # no tie: the order is defined
            assert answer.item_ids == expected
        else:
            assert sorted(answer.item_ids) == sorted(expected) or np.isclose(
                answer.scores[-1], expected_scores[row][-1], atol=1e-5
            )
