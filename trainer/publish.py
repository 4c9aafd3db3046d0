"""Publish a trained run as a new numbered version of every model in a Triton model repository.

A version is written next to the live ones and only becomes visible by an atomic rename, after the exports
passed parity; a refused publish leaves the repository untouched. :func:`activate` then hot-swaps a running
server: the step models load version N beside N-1 (their policy keeps two), and each ensemble is reloaded with
its steps pinned to N, so a request sees either all-old or all-new steps, never a mix.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from recsys.core.errors import ArtifactError
from serving.contract import FOLD_IN_FILE, ONNX_FILE, TORCHSCRIPT_FILE, USERS_FILE
from trainer.artifacts import HISTORY_FILE, IDS_FILE, METRICS_FILE, load_run
from trainer.export import ExportError, ParityReport, export_all
from trainer.models.base import FactorModel
from trainer.triton_config import (
    ENSEMBLE_A,
    ENSEMBLE_B,
    ENSEMBLES,
    FUSED,
    LOOKUP,
    LOOKUP_POPULAR,
    SCORER_ONNX,
    SCORER_TORCHSCRIPT,
    STEP_MODELS,
    TOPK,
    VERSIONED_MODELS,
    Flavour,
    pinned_ensemble_config,
    repository,
)

logger = logging.getLogger(__name__)

# Committed model code and configs (the local flavour); publish copies model.py into each version.
SOURCE_REPOSITORY = Path(__file__).resolve().parents[1] / "triton_models"
MANIFEST = "publish.json"

# What each step model's version folder holds, besides model.py.
_FILES = {
    LOOKUP: (IDS_FILE, HISTORY_FILE, USERS_FILE, FOLD_IN_FILE),
    LOOKUP_POPULAR: (IDS_FILE, HISTORY_FILE, USERS_FILE),
    SCORER_TORCHSCRIPT: (TORCHSCRIPT_FILE,),
    SCORER_ONNX: (ONNX_FILE,),
    TOPK: (IDS_FILE,),
    FUSED: (IDS_FILE, HISTORY_FILE, USERS_FILE, ONNX_FILE),
}


@dataclass(frozen=True)
class Published:
    version: int
    repository: Path
    parity: ParityReport


class ModelControl(Protocol):
    def load_model(self, name: str, config: str | None = None) -> None: ...


def versions(repository: Path) -> list[int]:
    """Version numbers present for every step model (a version is usable only when all steps have it)."""
    per_model = []
    for model in VERSIONED_MODELS:
        folder = repository / model
        per_model.append(
            {int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()} if folder.is_dir() else set()
        )
    return sorted(set.intersection(*per_model)) if per_model else []


def _all_numbers(repository: Path) -> set[int]:
    return {
        int(p.name)
        for model in VERSIONED_MODELS
        if (repository / model).is_dir()
        for p in (repository / model).iterdir()
        if p.is_dir() and p.name.isdigit()
    }


def render_repository(target: Path, flavour: Flavour | str = Flavour.local) -> list[Path]:
    """Writes every model's ``config.pbtxt`` (and, for python models, ``model.py``) of ``flavour`` into ``target``."""
    written = []
    for spec in repository(flavour):
        folder = target / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(spec.render())
        written.append(folder / "config.pbtxt")
    _ensure_ensemble_versions(target)
    return written


def _ensure_ensemble_versions(target: Path) -> None:
    # An ensemble has no files of its own, but Triton still wants one version folder under its policy.
    for ensemble in ENSEMBLES:
        (target / ensemble / "1").mkdir(parents=True, exist_ok=True)


def publish(run_dir: Path, repository_dir: Path, *, version: int | None = None) -> Published:
    """Exports, checks parity, and writes version ``version`` (default: the next number) of every step model."""
    run = load_run(run_dir)
    if not isinstance(run.model, FactorModel):
        raise ExportError(f"{run_dir}: a {run.model.name} model cannot be served by the factor scorer (use bpr or als)")
    repository_dir.mkdir(parents=True, exist_ok=True)
    if not all((repository_dir / spec.name / "config.pbtxt").is_file() for spec in repository()):
        render_repository(repository_dir)
    _ensure_ensemble_versions(repository_dir)
    # Next after the highest number any model has: a publish that died half-way never blocks the next one.
    existing = _all_numbers(repository_dir)
    number = version if version is not None else (max(existing) + 1 if existing else 1)
    if any((repository_dir / model / str(number)).exists() for model in VERSIONED_MODELS):
        raise ArtifactError(f"{repository_dir}: version {number} already exists")

    with tempfile.TemporaryDirectory(dir=repository_dir, prefix=".publish-") as tmp:
        staging = Path(tmp)
        parity = export_all(run.model, run.history, staging / "export")
        manifest = {
            "version": number,
            "run": str(run_dir.resolve()),
            "model": run.model.name,
            "metrics": {k: v for k, v in run.metrics.items() if isinstance(v, int | float | str)},
            "parity": asdict(parity),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        sources = {IDS_FILE: run_dir / IDS_FILE, HISTORY_FILE: run_dir / HISTORY_FILE}
        sources |= {name: staging / "export" / name for name in (TORCHSCRIPT_FILE, ONNX_FILE, USERS_FILE, FOLD_IN_FILE)}
        for model, files in _FILES.items():
            folder = staging / model
            folder.mkdir()
            shutil.copy2(_model_code(model), folder / "model.py")
            for name in files:
                if sources[name].exists() or name != FOLD_IN_FILE:  # no fold-in data for BPR: not live-foldable
                    shutil.copy2(sources[name], folder / name)
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copy2(run_dir / METRICS_FILE, staging / LOOKUP / METRICS_FILE)
        for model in _FILES:
            (staging / model).rename(repository_dir / model / str(number))
    logger.info("published version %d of %s into %s", number, run.model.name, repository_dir)
    return Published(version=number, repository=repository_dir, parity=parity)


def _model_code(model: str) -> Path:
    path = (SOURCE_REPOSITORY / model / "model.py").resolve()
    if not path.is_file():
        raise ArtifactError(f"model code {path} is missing from the checkout")
    return path


def activate(control: ModelControl, version: int, *, retire: bool = True) -> None:
    """Hot-swaps a running server (explicit model control) to ``version`` of every step, ensembles last.

    With ``retire``, each model is then reloaded with only ``version`` under its policy, so the previous
    version's scorers stop holding memory once nothing routes to them (Triton keeps serving a version while it
    reloads it).
    """
    for model in VERSIONED_MODELS:
        control.load_model(model)
    for ensemble in ENSEMBLES:
        pins = {model: version for model in STEP_MODELS}
        control.load_model(ensemble, config=_as_json(pinned_ensemble_config(ensemble, pins)))
    if not retire:
        return
    specs = {spec.name: spec for spec in repository()}
    for model in VERSIONED_MODELS:
        only = replace(specs[model], version_policy=f"specific {{ versions: [{version}] }}")
        control.load_model(model, config=_as_json(only.render()))


def load_all(control: ModelControl, repository_dir: Path) -> int:
    """Loads the newest complete version of every model, the ensembles pinned to it; returns that version.

    Pinning from the start (not ``latest``) is what keeps a later :func:`activate` atomic: while the steps load
    version N+1 one by one, the ensembles still route every request through version N only.
    """
    available = versions(repository_dir)
    if not available:
        raise ArtifactError(f"{repository_dir}: no complete published version")
    # The policy keeps two versions: retire the older one at once, unless there is only one.
    activate(control, available[-1], retire=len(available) > 1)
    return available[-1]


def _as_json(pbtxt: str) -> str:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    text: str = json_format.MessageToJson(message, preserving_proto_field_name=True)
    return text


__all__ = ["ENSEMBLE_A", "ENSEMBLE_B", "Published", "activate", "load_all", "publish", "render_repository", "versions"]
