"""The families' one description: every flavour renders valid Triton configs, wired consistently, committed and
not stale; versions, pinning and the S3 layout follow one rule for both families."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.core.errors import ArtifactError, ConfigError
from serving import contract
from serving.lookup import padded_rows
from trainer.export_session import recent_plays
from trainer.triton.configs import Flavour, as_override, only_version, parse, pinned, render
from trainer.triton.family import (
    ENSEMBLE_A,
    ENSEMBLE_ANN,
    ENSEMBLE_B,
    ENSEMBLE_C,
    FACTOR,
    FAMILIES,
    LOOKUP,
    SCORER_ANN,
    SCORER_ONNX,
    SCORER_TORCHSCRIPT,
    SESSION,
    SESSION_LOOKUP,
    SESSION_SCORER,
    SESSION_TOPK,
    Family,
    Options,
    family_for_model,
    family_of,
)
from trainer.triton.publish import SOURCE_REPOSITORY
from trainer.triton.repository import (
    next_version,
    options_of,
    published_families,
    read_config,
    render_repository,
    stale_configs,
    versions,
)

LOCAL_FLAVOURS = [Flavour.local, Flavour.native]


def _models(family: Family, flavour: Flavour = Flavour.local, options: Options | None = None) -> dict[str, Any]:
    return {config.name: parse(render(config)) for config in family.configs(flavour, options)}


@pytest.mark.parametrize("flavour", LOCAL_FLAVOURS)
@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_config_round_trips_as_a_triton_model_config(family: Family, flavour: Flavour) -> None:
    configs = family.configs(flavour)
    assert [c.name for c in configs] == [*family.files, *family.ensembles]
    for config in configs:
        assert parse(render(config)) == config
        assert config.max_batch_size == contract.MAX_BATCH_SIZE


def test_native_flavour_runs_the_scorers_on_the_native_backends_with_the_same_tensors() -> None:
    for family in FAMILIES:
        local, native = _models(family, Flavour.local), _models(family, Flavour.native)
        for name, config in native.items():
            assert list(config.input) == list(local[name].input)
            assert list(config.output) == list(local[name].output)
    native = _models(FACTOR, Flavour.native) | _models(SESSION, Flavour.native)
    assert native[SCORER_TORCHSCRIPT].backend == "pytorch"
    assert native[SCORER_TORCHSCRIPT].default_model_filename == contract.TORCHSCRIPT_FILE
    assert native[SCORER_ONNX].backend == native[SESSION_SCORER].backend == "onnxruntime"
    assert native[LOOKUP].backend == native[SESSION_LOOKUP].backend == "python"
    local = _models(SESSION)
    assert local[SESSION_SCORER].parameters["format"].string_value == "onnx"


def test_scorer_tensors_are_the_exported_graph_names_and_the_lookup_emits_its_length() -> None:
    factor = _models(FACTOR)
    assert [t.name for t in factor[SCORER_TORCHSCRIPT].input] == [
        contract.USER_VECTOR,
        contract.EXCLUDE,
        contract.TOP_K,
    ]
    session = _models(SESSION, options=Options(sequence_length=3))
    scorer, lookup = session[SESSION_SCORER], session[SESSION_LOOKUP]
    assert [t.name for t in scorer.input] == [contract.ITEM_SEQUENCE, contract.TOP_K]
    for config in (factor[SCORER_ONNX], scorer):
        assert [t.name for t in config.output] == [contract.SCORES, contract.ITEMS]
    taken = next(t for t in scorer.input if t.name == contract.ITEM_SEQUENCE)
    emitted = next(t for t in lookup.output if t.name == contract.ITEM_SEQUENCE)
    assert list(taken.dims) == list(emitted.dims) == [3]  # ONNX fixes L: the native backend checks it
    assert lookup.parameters["sequence_length"].string_value == "3"


def test_live_fold_in_is_a_rendered_parameter_of_the_personal_lookup() -> None:
    """Regression: the lookup read ``live_fold_in`` but no config ever set it."""
    assert _models(FACTOR)[LOOKUP].parameters["live_fold_in"].string_value == "true"
    off = _models(FACTOR, options=Options(live_fold_in=False))
    assert off[LOOKUP].parameters["live_fold_in"].string_value == "false"


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_ensemble_is_wired_step_to_step_with_the_public_interface(family: Family) -> None:
    models = _models(family)
    reference = _models(FACTOR)[ENSEMBLE_A]  # what the gateway sends and reads
    for name, chain in family.ensembles.items():
        config = models[name]
        available = {t.name for t in config.input}
        steps = config.ensemble_scheduling.step
        assert [s.model_name for s in steps] == list(chain)
        for step in steps:
            step_config = models[step.model_name]
            assert set(step.input_map) == {t.name for t in step_config.input}
            assert set(step.input_map.values()) <= available, f"{step.model_name} reads a tensor nobody produced"
            assert set(step.output_map) == {t.name for t in step_config.output}
            available |= set(step.output_map.values())
        assert {t.name for t in config.output} <= available
        assert list(config.input) == list(reference.input)
        assert list(config.output) == list(reference.output)


def test_committed_repository_is_the_local_rendering(tmp_path: Path) -> None:
    render_repository(tmp_path)
    for family in FAMILIES:
        for name in (*family.files, *family.ensembles):
            committed = SOURCE_REPOSITORY / name / contract.CONFIG_FILE
            assert committed.read_text() == (tmp_path / name / contract.CONFIG_FILE).read_text(), (
                f"{committed} is stale: run `recsys render-repo --out triton_models`"
            )
        for model in family.steps:
            assert (SOURCE_REPOSITORY / model / contract.MODEL_CODE_FILE).is_file()
        for name in family.ensembles:
            assert (tmp_path / name / "1").is_dir()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_model_code_imports_serving_only(family: Family) -> None:
    """Each model.py is a thin entry point: the served code is the ``serving`` package's."""
    for model in family.steps:
        tree = ast.parse((SOURCE_REPOSITORY / model / contract.MODEL_CODE_FILE).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert imported == {"serving.models"}, (model, imported)


def test_pinning_and_retiring_edit_the_message_not_text(tmp_path: Path) -> None:
    render_repository(tmp_path, options=Options(sequence_length=8))
    for name in (ENSEMBLE_A, ENSEMBLE_C):
        config = json.loads(as_override(pinned(read_config(tmp_path, name), 7)))
        assert {s["model_version"] for s in config["ensemble_scheduling"]["step"]} == {"7"}  # int64: a JSON string
    only = json.loads(as_override(only_version(read_config(tmp_path, SESSION_SCORER), 7)))
    assert only["version_policy"] == {"specific": {"versions": ["7"]}}
    assert only["input"][0]["dims"] == ["8"]  # the rest is the repository's own config
    assert only["parameters"]["format"]["string_value"] == "onnx"


def test_retire_overrides_keep_the_repositorys_flavour(tmp_path: Path) -> None:
    """Regression: ``publish --load`` rebuilt its overrides from the local flavour, so against a native repository
    it would have reloaded the scorers as python-backend models."""
    render_repository(tmp_path, Flavour.native)
    for model in FACTOR.steps:
        (tmp_path / model / "3").mkdir()

    class Recorder:
        def __init__(self) -> None:
            self.loads: list[tuple[str, str | None]] = []

        def load_model(self, name: str, config: str | None = None) -> None:
            self.loads.append((name, config))

    from trainer.triton.repository import activate

    recorder = Recorder()
    activate(recorder, tmp_path, FACTOR, 3)
    overrides = {name: json.loads(config) for name, config in recorder.loads if config is not None}
    assert overrides[SCORER_TORCHSCRIPT]["backend"] == "pytorch"
    assert overrides[SCORER_ONNX]["backend"] == "onnxruntime"
    # version 3 has no recsys_scorer_ann (an empty folder holds nothing): its steps are the required ones
    assert [name for name, _ in recorder.loads][-len(FACTOR.required_steps) :] == list(FACTOR.required_steps)
    assert SCORER_ANN not in {name for name, _ in recorder.loads}


def test_sequence_length_is_read_back_from_the_repository_and_checked(tmp_path: Path) -> None:
    render_repository(tmp_path, options=Options(sequence_length=8))
    assert options_of(tmp_path, SESSION).sequence_length == 8
    scorer = next(c for c in SESSION.configs(Flavour.local, Options(sequence_length=10)) if c.name == SESSION_SCORER)
    (tmp_path / SESSION_SCORER / contract.CONFIG_FILE).write_text(render(scorer))
    with pytest.raises(ArtifactError, match="emits ITEM_SEQUENCE of length 8"):
        options_of(tmp_path, SESSION)


def test_versions_are_one_counter_and_complete_per_family(tmp_path: Path) -> None:
    render_repository(tmp_path)
    assert versions(tmp_path, FACTOR) == versions(tmp_path, SESSION) == []
    assert next_version(tmp_path) == 1
    for family, version in ((FACTOR, 1), (SESSION, 2)):
        for model in family.steps:
            (tmp_path / model / str(version)).mkdir()
            (tmp_path / model / str(version) / "model.py").touch()
    (tmp_path / SESSION_LOOKUP / "3").mkdir()  # a publish that died half-way
    (tmp_path / SESSION_LOOKUP / "3" / "ids.npz").touch()
    assert versions(tmp_path, FACTOR) == [1]
    assert versions(tmp_path, SESSION) == [2]
    assert next_version(tmp_path) == 4
    assert [f.name for f in published_families(tmp_path)] == ["factor", "session"]


def test_families_are_found_by_model_and_by_served_name() -> None:
    assert family_for_model("als") is family_for_model("bpr") is FACTOR
    assert family_for_model("gru4rec") is SESSION
    with pytest.raises(ArtifactError, match="a popularity model cannot be published"):
        family_for_model("popularity")
    assert family_of(SESSION_TOPK) is SESSION
    assert family_of(ENSEMBLE_A) is FACTOR
    with pytest.raises(ConfigError):
        family_of("recsys_zz")


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
    padded = padded_rows(indptr, indices, [0, -1, 2, 3, 1], 3)
    assert padded.tolist() == [[6, 7, 8], [-1, -1, -1], [-1, -1, -1], [1, 3, -1], [2, -1, -1]]


def test_bad_flavour_and_length_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown flavour"):
        render_repository(tmp_path, "docker")
    with pytest.raises(ConfigError, match="sequence_length must be >= 1"):
        Options(sequence_length=0)


def test_a_renamed_family_serves_a_second_lineage_beside_the_first(tmp_path: Path) -> None:
    arm = FACTOR.renamed("_static")
    assert arm.steps == tuple(f"{m}_static" for m in FACTOR.steps)
    assert arm.ensembles["recsys_a_static"] == tuple(f"{m}_static" for m in FACTOR.ensembles[ENSEMBLE_A])
    assert arm.source_of("recsys_lookup_static") == LOOKUP
    render_repository(tmp_path, families=(FACTOR, arm))
    config = read_config(tmp_path, "recsys_a_static")
    assert [s.model_name for s in config.ensemble_scheduling.step] == list(arm.ensembles["recsys_a_static"])
    assert read_config(tmp_path, "recsys_lookup_static").name == "recsys_lookup_static"
    assert FACTOR.steps == (
        LOOKUP,
        "recsys_lookup_popular",
        SCORER_TORCHSCRIPT,
        SCORER_ONNX,
        "recsys_topk",
        "recsys_fused",
        "recsys_scorer_ann",
    )
    assert arm.optional_steps == ("recsys_scorer_ann_static",)
    assert "recsys_ann_static" not in arm.ensembles_over(arm.required_steps)
    with pytest.raises(ConfigError, match="suffix"):
        FACTOR.renamed("-x")


def test_a_version_without_an_index_serves_no_recsys_ann_and_a_swap_to_it_unloads_it(tmp_path: Path) -> None:
    """Issue 17: recsys_scorer_ann is an optional step. Version 1 has it, version 2 does not: both are complete;
    a start pins version 2 without the approximate models, and a swap from 1 to 2 (or a start's pin on a server
    still holding 1) unloads them, ensemble first: else recsys_ann would answer from version 1's index, then fail
    once version 1's lookup is retired."""
    from trainer.triton.repository import activate, pin, version_ensembles, version_steps

    render_repository(tmp_path)
    for version, steps in ((1, FACTOR.steps), (2, FACTOR.required_steps)):
        for model in steps:
            (tmp_path / model / str(version)).mkdir()
            (tmp_path / model / str(version) / "model.py").touch()
    assert versions(tmp_path, FACTOR) == [1, 2]
    assert SCORER_ANN in version_steps(tmp_path, FACTOR, 1)
    assert version_steps(tmp_path, FACTOR, 2) == FACTOR.required_steps
    assert ENSEMBLE_ANN in version_ensembles(tmp_path, FACTOR, 1)
    assert ENSEMBLE_ANN not in version_ensembles(tmp_path, FACTOR, 2)
    assert ENSEMBLE_B in version_ensembles(tmp_path, FACTOR, 2)

    class Server:
        def __init__(self) -> None:
            self.ready: set[str] = set()
            self.unloads: list[str] = []

        def load_model(self, name: str, config: str | None = None) -> None:
            self.ready.add(name)

        def unload_model(self, name: str, *, wait: bool = True) -> None:
            self.unloads.append(name)
            self.ready.discard(name)

        def is_model_ready(self, name: str, version: str = "") -> bool:
            return name in self.ready

    server = Server()
    pin(server, tmp_path, FACTOR, 2)
    assert not {SCORER_ANN, ENSEMBLE_ANN} & server.ready
    activate(server, tmp_path, FACTOR, 1)
    assert {SCORER_ANN, ENSEMBLE_ANN} <= server.ready
    assert server.unloads == []
    activate(server, tmp_path, FACTOR, 2)
    assert server.unloads == [ENSEMBLE_ANN, SCORER_ANN]
    assert server.ready == set(FACTOR.required_steps) | set(version_ensembles(tmp_path, FACTOR, 2))
    activate(server, tmp_path, FACTOR, 1)
    pin(server, tmp_path, FACTOR, 2)  # a start's load_all on a server that still holds version 1's
    assert server.unloads == [ENSEMBLE_ANN, SCORER_ANN] * 2


def test_a_version_that_did_not_load_is_withdrawn_and_the_previous_one_pinned_again(tmp_path: Path) -> None:
    """Regression (review): a version whose swap failed stayed in the repository, the next cycle took it for the
    served one, and its load then unloaded the version really serving."""
    from recsys.core.errors import RecsysError
    from trainer.triton.repository import withdraw

    render_repository(tmp_path)
    for version in (1, 2):
        for model in FACTOR.steps:
            (tmp_path / model / str(version)).mkdir()
            (tmp_path / model / str(version) / "model.py").touch()

    class Flaky:
        def __init__(self) -> None:
            self.pins: list[str] = []

        def load_model(self, name: str, config: str | None = None) -> None:
            if config and name in FACTOR.ensembles:
                pinned = {s["model_version"] for s in json.loads(config)["ensemble_scheduling"]["step"]}
                if pinned == {"2"}:
                    raise RecsysError("version 2 did not load")
                self.pins.extend(pinned)

    control = Flaky()
    assert withdraw(control, tmp_path, FACTOR, failed=2, previous=1) is None
    assert versions(tmp_path, FACTOR) == [1]
    assert set(control.pins) == {"1"}
    assert next_version(tmp_path) == 2  # the number is free again: nothing was ever served under it


def test_a_config_rendered_by_an_older_release_is_refused_at_publish_with_the_fix(
    tmp_path: Path, small_als_run: Path
) -> None:
    """A repository rendered before recsys_scorer_ann answered item ids itself (its config declared ITEMS) would
    fail every recsys_ann request at inference: publish refuses it, naming the models and `recsys render-repo`."""
    from trainer.triton.publish import publish

    render_repository(tmp_path)
    assert stale_configs(tmp_path, FACTOR) == []
    path = tmp_path / SCORER_ANN / "config.pbtxt"
    older = path.read_text().replace(
        'name: "ITEM_IDS"\n  data_type: TYPE_STRING', 'name: "ITEMS"\n  data_type: TYPE_INT64'
    )
    assert older != path.read_text()
    path.write_text(older)
    assert stale_configs(tmp_path, FACTOR) == [SCORER_ANN]
    with pytest.raises(ArtifactError, match=rf"the configs of {SCORER_ANN} come from an older release.*render-repo"):
        publish(small_als_run, tmp_path)
    assert versions(tmp_path, FACTOR) == []
    render_repository(tmp_path)
    assert stale_configs(tmp_path, FACTOR) == []
