"""The model repository's one description: both flavours are valid Triton configs, wired consistently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from trainer import export, run_files
from trainer.publish import SOURCE_REPOSITORY, _as_json, render_repository
from trainer.triton_config import (
    ENSEMBLE_A,
    ENSEMBLES,
    SCORER_TORCHSCRIPT,
    STEP_MODELS,
    Flavour,
    pinned_ensemble_config,
    repository,
)


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("flavour", list(Flavour))
def test_every_config_parses_as_a_triton_model_config(flavour: Flavour) -> None:
    for spec in repository(flavour):
        config = _parse(spec.render())
        assert config.name == spec.name
        assert config.max_batch_size > 0


def test_native_flavour_uses_the_native_backends() -> None:
    configs = {spec.name: _parse(spec.render()) for spec in repository(Flavour.native)}
    assert configs["recsys_scorer_torchscript"].backend == "pytorch"
    assert configs["recsys_scorer_torchscript"].default_model_filename == run_files.TORCHSCRIPT_FILE
    assert configs["recsys_scorer_onnx"].backend == "onnxruntime"
    assert configs["recsys_scorer_onnx"].default_model_filename == run_files.ONNX_FILE
    local = {spec.name: _parse(spec.render()) for spec in repository(Flavour.local)}
    for name, config in configs.items():  # same tensors in both flavours
        assert list(config.input) == list(local[name].input)
        assert list(config.output) == list(local[name].output)


def test_scorer_tensors_are_the_exported_graph_names() -> None:
    config = _parse(next(s for s in repository() if s.name == SCORER_TORCHSCRIPT).render())
    assert [t.name for t in config.input] == [export.USER_VECTOR, export.EXCLUDE, export.TOP_K]
    assert [t.name for t in config.output] == [export.SCORES, export.ITEMS]


def test_ensembles_are_wired_step_to_step() -> None:
    models = {spec.name: _parse(spec.render()) for spec in repository()}
    for ensemble, (lookup, scorer) in ENSEMBLES.items():
        config = models[ensemble]
        available = {t.name for t in config.input}
        steps = config.ensemble_scheduling.step
        assert [s.model_name for s in steps][:2] == [lookup, scorer]
        for step in steps:
            step_config = models[step.model_name]
            assert set(step.input_map) == {t.name for t in step_config.input}
            assert set(step.input_map.values()) <= available, f"{step.model_name} reads a tensor nobody produced"
            assert set(step.output_map) <= {t.name for t in step_config.output}
            available |= set(step.output_map.values())
        assert {t.name for t in config.output} <= available


def test_committed_repository_is_the_local_rendering(tmp_path: Path) -> None:
    render_repository(tmp_path)
    for spec in repository():
        committed = SOURCE_REPOSITORY / spec.name / "config.pbtxt"
        assert committed.read_text() == (tmp_path / spec.name / "config.pbtxt").read_text(), (
            f"{committed} is stale: run `recsys render-repo --out triton_models`"
        )
    for model in STEP_MODELS:
        assert (SOURCE_REPOSITORY / model / "model.py").is_file()


def test_pinned_ensemble_switches_every_step() -> None:
    pins = dict.fromkeys(STEP_MODELS, 7)
    config = json.loads(_as_json(pinned_ensemble_config(ENSEMBLE_A, pins)))
    versions = {step["model_name"]: step["model_version"] for step in config["ensemble_scheduling"]["step"]}
    assert set(versions.values()) == {"7"}
    assert len(versions) == 3
