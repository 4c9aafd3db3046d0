"""Variant C's description: valid Triton configs in both flavours, wired consistently, committed and not stale."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from recsys.core.errors import ArtifactError, ConfigError
from trainer import export_session, run_files
from trainer.publish import SOURCE_REPOSITORY
from trainer.publish_session import (
    only_version_config,
    padded_sequences,
    pinned_session_ensemble_config,
    recent_plays,
    render_session_repository,
    sequence_length_of,
    session_versions,
)
from trainer.triton_config import ENSEMBLE_A, Flavour, ensemble_spec
from trainer.triton_session import (
    ENSEMBLE_C,
    ITEM_SEQUENCE,
    SEQUENCE_LENGTH,
    SESSION_LOOKUP,
    SESSION_SCORER,
    SESSION_STEP_MODELS,
    SESSION_TOPK,
    session_repository,
)


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _models(flavour: Flavour = Flavour.local, length: int = SEQUENCE_LENGTH) -> dict[str, model_config_pb2.ModelConfig]:
    return {spec.name: _parse(spec.render()) for spec in session_repository(flavour, sequence_length=length)}


@pytest.mark.parametrize("flavour", list(Flavour))
@pytest.mark.parametrize("length", [1, 8, SEQUENCE_LENGTH])
def test_every_config_parses_as_a_triton_model_config(flavour: Flavour, length: int) -> None:
    specs = session_repository(flavour, sequence_length=length)
    assert [s.name for s in specs] == [*SESSION_STEP_MODELS, ENSEMBLE_C]
    for spec in specs:
        config = _parse(spec.render())
        assert config.name == spec.name
        assert config.max_batch_size > 0


def test_local_scorer_hosts_onnx_and_native_uses_the_onnxruntime_backend() -> None:
    local, native = _models(Flavour.local), _models(Flavour.native)
    assert local[SESSION_SCORER].backend == "python"
    assert local[SESSION_SCORER].parameters["format"].string_value == "onnx"
    assert native[SESSION_SCORER].backend == "onnxruntime"
    assert native[SESSION_SCORER].default_model_filename == run_files.ONNX_FILE
    for name in (SESSION_LOOKUP, SESSION_TOPK):
        assert native[name].backend == local[name].backend == "python"
    for name, config in native.items():  # same tensors in both flavours
        assert list(config.input) == list(local[name].input)
        assert list(config.output) == list(local[name].output)


@pytest.mark.parametrize("length", [3, SEQUENCE_LENGTH])
def test_scorer_tensors_are_the_exported_graph_names_and_the_lookup_emits_its_length(length: int) -> None:
    assert ITEM_SEQUENCE == export_session.ITEM_SEQUENCE
    models = _models(length=length)
    scorer, lookup = models[SESSION_SCORER], models[SESSION_LOOKUP]
    assert [t.name for t in scorer.input] == [export_session.ITEM_SEQUENCE, export_session.TOP_K]
    assert [t.name for t in scorer.output] == [export_session.SCORES, export_session.ITEMS]
    taken = next(t for t in scorer.input if t.name == ITEM_SEQUENCE)
    emitted = next(t for t in lookup.output if t.name == ITEM_SEQUENCE)
    assert list(taken.dims) == list(emitted.dims) == [length]  # ONNX fixes L: the native backend checks it
    assert int(lookup.parameters["sequence_length"].string_value) == length


def test_the_ensemble_is_wired_step_to_step_and_has_the_variants_interface() -> None:
    models = _models()
    config = models[ENSEMBLE_C]
    available = {t.name for t in config.input}
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == list(SESSION_STEP_MODELS)
    for step in steps:
        step_config = models[step.model_name]
        assert set(step.input_map) == {t.name for t in step_config.input}
        assert set(step.input_map.values()) <= available, f"{step.model_name} reads a tensor nobody produced"
        assert set(step.output_map) <= {t.name for t in step_config.output}
        available |= set(step.output_map.values())
    assert {t.name for t in config.output} <= available
    variant_a = _parse(ensemble_spec(ENSEMBLE_A).render())  # what the gateway sends and reads
    assert list(config.input) == list(variant_a.input)
    assert list(config.output) == list(variant_a.output)


def test_committed_repository_is_the_local_rendering(tmp_path: Path) -> None:
    render_session_repository(tmp_path)
    for spec in session_repository():
        committed = SOURCE_REPOSITORY / spec.name / "config.pbtxt"
        assert committed.read_text() == (tmp_path / spec.name / "config.pbtxt").read_text(), (
            f"{committed} is stale: render it with trainer.publish_session.render_session_repository"
        )
    for model in SESSION_STEP_MODELS:
        assert (SOURCE_REPOSITORY / model / "model.py").is_file()
    assert (tmp_path / ENSEMBLE_C / "1").is_dir()


ALLOWED_IMPORTS = {"__future__", "json", "pathlib", "typing", "warnings", "numpy", "numpy.typing"}
ALLOWED_IMPORTS |= {"triton_python_backend_utils", "trainer.serving_steps", "serving.contract"}


@pytest.mark.parametrize("model", SESSION_STEP_MODELS)
def test_model_code_imports_only_the_serving_dependencies(model: str) -> None:
    tree = ast.parse((SOURCE_REPOSITORY / model / "model.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    allowed = ALLOWED_IMPORTS | ({"onnxruntime", "torch"} if model == SESSION_SCORER else set())
    assert imported <= allowed, imported - allowed


def test_pinned_ensemble_and_single_version_overrides(tmp_path: Path) -> None:
    render_session_repository(tmp_path, sequence_length=8)
    pinned = json.loads(pinned_session_ensemble_config(tmp_path, 7))
    versions = {step["model_name"]: step["model_version"] for step in pinned["ensemble_scheduling"]["step"]}
    assert versions == dict.fromkeys(SESSION_STEP_MODELS, "7")
    only = json.loads(only_version_config(tmp_path, SESSION_SCORER, 7))
    assert only["version_policy"] == {"specific": {"versions": ["7"]}}  # int64 is a JSON string
    assert only["input"][0]["dims"] == ["8"]  # the rest is the repository's own config
    assert only["parameters"]["format"]["string_value"] == "onnx"


def test_sequence_length_is_read_from_the_repository_and_checked(tmp_path: Path) -> None:
    render_session_repository(tmp_path, sequence_length=8)
    assert sequence_length_of(tmp_path) == 8
    scorer = next(s for s in session_repository(sequence_length=10) if s.name == SESSION_SCORER)
    (tmp_path / SESSION_SCORER / "config.pbtxt").write_text(scorer.render())
    with pytest.raises(ArtifactError, match="emits ITEM_SEQUENCE of length 8"):
        sequence_length_of(tmp_path)


def test_session_versions_are_those_every_step_has(tmp_path: Path) -> None:
    render_session_repository(tmp_path)
    assert session_versions(tmp_path) == []
    for model in SESSION_STEP_MODELS:
        (tmp_path / model / "1").mkdir()
    (tmp_path / SESSION_LOOKUP / "2").mkdir()  # a publish that died half-way
    assert session_versions(tmp_path) == [1]


def test_recent_plays_keep_the_last_plays_oldest_first() -> None:
    sequences = np.array(
        [
            [4, 5, 6, 7, 8, -1],  # cut to the last 3
            [2, -1, -1, -1, -1, -1],
            [-1, -1, -1, -1, -1, -1],  # no recent plays
            [1, 99, 3, -1, -1, -1],  # 99 is no item (n_items = 10): skipped like padding
        ]
    )
    indptr, indices = recent_plays(sequences, 3, n_items=10)
    assert indptr.tolist() == [0, 3, 4, 4, 6]
    assert indices.tolist() == [6, 7, 8, 2, 1, 3]
    padded = padded_sequences(indptr, indices, [0, -1, 2, 3, 1], 3)
    assert padded.tolist() == [[6, 7, 8], [-1, -1, -1], [-1, -1, -1], [1, 3, -1], [2, -1, -1]]


def test_bad_flavour_and_length_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown flavour"):
        session_repository("docker")
    with pytest.raises(ConfigError, match="sequence_length must be >= 1"):
        session_repository(sequence_length=0)
