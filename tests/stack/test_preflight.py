"""What ``LocalStack.preflight`` refuses before anything starts, besides ports (tests/stack/test_ports.py): an
experiment naming a model the repository does not have (the canary's models count: the stack loads them), an
empty repository. No server is started."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from recsys.core.errors import ArtifactError, ConfigError
from recsys.stack.local import LocalStack, StackConfig, StackPorts

ROOT = Path(__file__).resolve().parents[2]


def stack_for(tmp_path: Path, repository: Path, experiment: Path) -> LocalStack:
    return LocalStack(StackConfig(model_repository=repository, workdir=tmp_path / "stack", ports=StackPorts.free(),
                                  experiment_file=experiment, postgres_dir=tmp_path / "pg"))  # fmt: skip


def test_an_experiment_model_the_repository_lacks_is_named(tmp_path: Path, served_repository: Path) -> None:
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "groups:\n  - {name: A, model: recsys_a, share: 60}\n  - {name: B, model: recsys_c, share: 40}\n"
    )
    stack = stack_for(tmp_path, served_repository, experiment)
    with pytest.raises(ConfigError, match=r"gives group B the model 'recsys_c', which the model repository") as info:
        stack.preflight()
    assert "\n" not in str(info.value)
    assert "(it serves recsys_a, " in str(info.value)  # what it does serve


def test_an_experiment_naming_recsys_ann_of_a_version_without_an_index_is_one_line(
    tmp_path: Path, served_repository: Path
) -> None:
    """Issue 17: a small catalogue's version has no approximate index, so recsys_ann is not served; a group routed to
    it fails at start, saying why, instead of every request of the group failing."""
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        "groups:\n  - {name: A, model: recsys_a, share: 60}\n  - {name: B, model: recsys_ann, share: 40}\n"
    )
    wanted = r"gives group B the model 'recsys_ann', which \S+ does not serve: version 1 of the factor models"
    with pytest.raises(ConfigError, match=wanted) as info:
        stack_for(tmp_path, served_repository, experiment).preflight()
    assert "\n" not in str(info.value)
    assert "published without an approximate index" in str(info.value)
    assert not (tmp_path / "pg").exists()


def test_the_committed_experiments_pass(tmp_path: Path, served_repository: Path) -> None:
    for experiment in (
        ROOT / "gateway" / "experiment.yaml",
        *sorted((ROOT / "gateway" / "experiments").glob("*.yaml")),
    ):
        stack_for(tmp_path, served_repository, experiment).check_experiment()  # the canary's too


def test_an_empty_repository_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    stack = stack_for(tmp_path, tmp_path / "empty", ROOT / "gateway" / "experiment.yaml")
    with pytest.raises(ArtifactError, match="no complete published version"):
        stack.preflight()
    assert not (tmp_path / "pg").exists()


def test_a_crashed_stacks_live_servers_are_named_and_a_dead_stack_is_forgotten(
    tmp_path: Path, served_repository: Path
) -> None:
    """A state file whose supervisor is gone: refused while one of its servers still runs, removed once none does."""
    from test_state import gone_supervisor, record, spawn_server, state_of

    from recsys.stack.pids import ProcessId, wait_gone
    from recsys.stack.state import StackStateError, write_state

    stack = stack_for(tmp_path, served_repository, ROOT / "gateway" / "experiment.yaml")
    server = spawn_server()
    try:
        seen = ProcessId.of(server.pid)
        assert seen is not None
        write_state(stack.state_path, state_of(gone_supervisor(), record("tritonserver", seen)))
        with pytest.raises(StackStateError, match=rf"\(gone\) still runs tritonserver \(pid {server.pid}\)"):
            stack.preflight()
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its child
        server.wait()
    assert wait_gone(seen, 10, group=True)
    stack.preflight()  # nothing of it runs any more: the stale file goes, the checks pass
    assert not stack.state_path.exists()


def test_a_repository_rendered_by_an_older_release_is_refused_before_anything_starts(
    tmp_path: Path, served_repository: Path
) -> None:
    """recsys_ann as an older release wired it (lookup -> scorer -> recsys_topk): a start names the stale configs
    and the command that renders them again, instead of serving an ensemble whose every request fails."""
    import shutil

    from trainer.triton.configs import ensemble, render
    from trainer.triton.family import ENSEMBLE_ANN, FACTOR, LOOKUP, SCORER_ANN, SCORER_ONNX, TOPK
    from trainer.triton.repository import read_config

    repository = shutil.copytree(served_repository, tmp_path / "repository")
    older = ensemble(
        ENSEMBLE_ANN,
        [read_config(repository, m) for m in (LOOKUP, SCORER_ONNX, TOPK)],
        ("ITEM_IDS", "SCORES", "FALLBACK", "MODEL_VERSION"),
    )
    (repository / ENSEMBLE_ANN / "config.pbtxt").write_text(render(older))
    with pytest.raises(ArtifactError, match=rf"the configs of {ENSEMBLE_ANN} come from an older release") as info:
        stack_for(tmp_path, repository, ROOT / "gateway" / "experiment.yaml").preflight()
    assert f"recsys render-repo --out {repository}" in str(info.value)
    assert "\n" not in str(info.value)
    assert FACTOR.ensembles[ENSEMBLE_ANN] == (LOOKUP, SCORER_ANN)
