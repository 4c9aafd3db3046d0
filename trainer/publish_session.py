"""Publish a trained GRU4Rec run as a numbered version of the session models (variant C), and load it.

A GRU4Rec run has the layout of every run (:func:`trainer.artifacts.save_run`): ``model.npz`` (``GRU4Rec.save``:
arrays and a JSON header, no pickle), ``ids.npz`` (external user and item ids of the training
:class:`~trainer.data.interactions.Interactions`, by index), ``history.npz`` and ``metrics.json``. GRU4Rec keeps
each listener's latest session (``user_sequences``) from its fit, so the run holds everything the lookup needs.
:func:`load_session_run` reads it back (GRU4Rec is not in the factor models' registry that ``load_run`` uses).

A version holds, per model folder: the lookup ``ids.npz`` + ``sequences.npz`` (each listener's last ``L`` plays
as CSR arrays), the scorer ``model.onnx`` + ``model.pt`` (both parity-checked by ``export_session_all``), the
top-k ``ids.npz``; each with its ``model.py`` and ``publish.json``. As with :mod:`trainer.publish` it is
written into a staging folder inside the repository and appears only by renames once parity passed, so a refused
publish leaves the repository untouched. Session versions are numbered on their own (the factor models' numbers
are :mod:`trainer.publish`'s); ``recsys_c`` reports the session version as ``MODEL_VERSION``.

:func:`activate_session` hot-swaps like :func:`trainer.publish.activate`: the steps load version N beside N-1,
then ``recsys_c`` is reloaded with every step pinned to N, so a request never mixes versions. The overrides
are built from the repository's own ``config.pbtxt`` files, so they always match what the server reads.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from recsys.core.errors import ArtifactError
from serving.contract import IDS_FILE, METRICS_FILE, MODEL_FILE, ONNX_FILE, TORCHSCRIPT_FILE
from trainer.export import ParityReport
from trainer.publish import MANIFEST, ModelControl, _model_code
from trainer.triton_config import Flavour
from trainer.triton_session import (
    ENSEMBLE_C,
    ITEM_SEQUENCE,
    SEQUENCE_LENGTH,
    SEQUENCES_FILE,
    SESSION_LOOKUP,
    SESSION_SCORER,
    SESSION_STEP_MODELS,
    SESSION_TOPK,
    session_repository,
)

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

    from trainer.models.gru4rec import GRU4Rec

logger = logging.getLogger(__name__)

CONFIG = "config.pbtxt"
# What each session step's version folder holds, besides model.py and the manifest.
_FILES = {
    SESSION_LOOKUP: (IDS_FILE, SEQUENCES_FILE),
    SESSION_SCORER: (ONNX_FILE, TORCHSCRIPT_FILE),
    SESSION_TOPK: (IDS_FILE,),
}


@dataclass(frozen=True)
class SessionRun:
    model: GRU4Rec
    user_ids: npt.NDArray[Any]
    item_ids: npt.NDArray[Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class PublishedSession:
    version: int
    repository: Path
    sequence_length: int
    parity: ParityReport


def load_session_run(run_dir: Path) -> SessionRun:
    """A GRU4Rec run written by ``save_run``; ArtifactError when it is incomplete or holds another model."""
    from trainer.models.gru4rec import GRU4Rec

    for name in (MODEL_FILE, IDS_FILE, METRICS_FILE):
        if not (run_dir / name).is_file():
            raise ArtifactError(f"{run_dir}: missing {name} (write GRU4Rec runs with trainer.artifacts.save_run)")
    model = GRU4Rec.load(run_dir / MODEL_FILE)
    with np.load(run_dir / IDS_FILE, allow_pickle=False) as npz:
        user_ids, item_ids = npz["user_ids"], npz["item_ids"]
    if model.n_items != len(item_ids):
        raise ArtifactError(f"{run_dir}: the model knows {model.n_items} items, ids.npz lists {len(item_ids)}")
    if len(model.user_sequences) != len(user_ids):
        raise ArtifactError(
            f"{run_dir}: the model holds {len(model.user_sequences)} listeners' recent sequences, ids.npz lists "
            f"{len(user_ids)} users (fit with GRU4Rec.fit on the run's Interactions)"
        )
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    return SessionRun(model=model, user_ids=user_ids, item_ids=item_ids, metrics=metrics)


def recent_plays(
    sequences: npt.NDArray[np.int64], sequence_length: int, n_items: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """CSR ``indptr, indices`` of each row's last ``sequence_length`` valid items, oldest first (what the lookup
    pads back to ``[B, L]``); padding and ids outside ``0..n_items-1`` are dropped, as the scorer skips them."""
    sequences = np.asarray(sequences, dtype=np.int64)
    valid = (sequences >= 0) & (sequences < n_items)
    from_end = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1]  # valid plays at or after each position
    keep = valid & (from_end <= sequence_length)
    indptr = np.concatenate(([0], np.cumsum(keep.sum(axis=1)))).astype(np.int64)
    return indptr, sequences[keep]


def padded_sequences(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[np.int64], rows: npt.ArrayLike, sequence_length: int
) -> npt.NDArray[np.int64]:
    """What the lookup emits for ``rows`` (-1: an unknown listener, all padding): ``[len(rows), L]``."""
    from serving.lookup import padded_rows

    return padded_rows(indptr, indices, rows, sequence_length)


# ------------------------------------------------------------------------------------------------ repository


def render_session_repository(
    target: Path, flavour: Flavour | str = Flavour.local, *, sequence_length: int = SEQUENCE_LENGTH
) -> list[Path]:
    """Writes the session models' and ``recsys_c``'s ``config.pbtxt`` of ``flavour`` into ``target``."""
    written = []
    for spec in session_repository(flavour, sequence_length=sequence_length):
        folder = target / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG).write_text(spec.render())
        written.append(folder / CONFIG)
    _ensure_ensemble_version(target)
    return written


def _ensure_ensemble_version(target: Path) -> None:
    # An ensemble has no files of its own, but Triton still wants one version folder under its policy.
    (target / ENSEMBLE_C / "1").mkdir(parents=True, exist_ok=True)


def _numbers(folder: Path) -> set[int]:
    if not folder.is_dir():
        return set()
    return {int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}


def session_versions(repository_dir: Path) -> list[int]:
    """Version numbers present for every session step (a version is usable only when all three have it)."""
    return sorted(set.intersection(*(_numbers(repository_dir / model) for model in SESSION_STEP_MODELS)))


def read_config(repository_dir: Path, model: str) -> model_config_pb2.ModelConfig:
    """``model``'s ``config.pbtxt`` in ``repository_dir`` as Triton's ModelConfig message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = repository_dir / model / CONFIG
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (render it with render_session_repository)")
    message: model_config_pb2.ModelConfig = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return message


def sequence_length_of(repository_dir: Path) -> int:
    """The ``L`` the repository was rendered with; ArtifactError when the lookup and the scorer disagree."""
    lookup = read_config(repository_dir, SESSION_LOOKUP)
    scorer = read_config(repository_dir, SESSION_SCORER)
    emitted = int(lookup.parameters["sequence_length"].string_value)
    taken = next((list(t.dims) for t in scorer.input if t.name == ITEM_SEQUENCE), None)
    if taken != [emitted]:
        raise ArtifactError(
            f"{repository_dir}: {SESSION_LOOKUP} emits {ITEM_SEQUENCE} of length {emitted}, {SESSION_SCORER} "
            f"takes {taken}; render the session repository again"
        )
    return emitted


def _as_json(message: model_config_pb2.ModelConfig) -> str:
    from google.protobuf import json_format

    text: str = json_format.MessageToJson(message, preserving_proto_field_name=True)
    return text


def pinned_session_ensemble_config(repository_dir: Path, version: int) -> str:
    """``recsys_c``'s config (as the JSON a load override takes) with every step pinned to ``version``."""
    config = read_config(repository_dir, ENSEMBLE_C)
    for step in config.ensemble_scheduling.step:
        step.model_version = version
    return _as_json(config)


def only_version_config(repository_dir: Path, model: str, version: int) -> str:
    """``model``'s config with a version policy that keeps only ``version`` (JSON, for a load override)."""
    from tritonclient.grpc import model_config_pb2

    config = read_config(repository_dir, model)
    config.version_policy.specific.CopyFrom(model_config_pb2.ModelVersionPolicy.Specific(versions=[version]))
    return _as_json(config)


# ------------------------------------------------------------------------------------------------ publish


def publish_session(run_dir: Path, repository_dir: Path, *, version: int | None = None) -> PublishedSession:
    """Exports (L = the repository's sequence length), checks parity, and writes version ``version`` (default:
    the next number) of every session step; renders the session configs first where they are missing."""
    from trainer.export_session import export_session_all

    run = load_session_run(run_dir)
    repository_dir.mkdir(parents=True, exist_ok=True)
    if not all((repository_dir / spec.name / CONFIG).is_file() for spec in session_repository()):
        render_session_repository(repository_dir)
    _ensure_ensemble_version(repository_dir)
    length = sequence_length_of(repository_dir)
    # Next after the highest number any session step has: a publish that died half-way never blocks the next.
    existing = set().union(*(_numbers(repository_dir / model) for model in SESSION_STEP_MODELS))
    number = version if version is not None else (max(existing) + 1 if existing else 1)
    if number < 1 or any((repository_dir / model / str(number)).exists() for model in SESSION_STEP_MODELS):
        raise ArtifactError(f"{repository_dir}: session version {number} already exists or is not >= 1")

    with tempfile.TemporaryDirectory(dir=repository_dir, prefix=".publish-session-") as tmp:
        staging = Path(tmp)
        exported = export_session_all(run.model, staging / "export", max_len=length)
        indptr, indices = recent_plays(run.model.user_sequences, length, run.model.n_items)
        np.savez(staging / SEQUENCES_FILE, indptr=indptr, indices=indices, sequence_length=np.int64(length))
        manifest = {
            "version": number,
            "run": str(run_dir.resolve()),
            "model": run.model.name,
            "sequence_length": length,
            "metrics": {k: v for k, v in run.metrics.items() if isinstance(v, int | float | str)},
            "parity": asdict(exported.parity),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        sources = {
            IDS_FILE: run_dir / IDS_FILE,
            SEQUENCES_FILE: staging / SEQUENCES_FILE,
            ONNX_FILE: exported.onnx,
            TORCHSCRIPT_FILE: exported.torchscript,
        }
        for model, files in _FILES.items():
            folder = staging / model
            folder.mkdir()
            shutil.copy2(_model_code(model), folder / "model.py")
            for name in files:
                shutil.copy2(sources[name], folder / name)
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copy2(run_dir / METRICS_FILE, staging / SESSION_LOOKUP / METRICS_FILE)
        for model in _FILES:
            (staging / model).rename(repository_dir / model / str(number))
    logger.info("published session version %d (L = %d) into %s", number, length, repository_dir)
    return PublishedSession(version=number, repository=repository_dir, sequence_length=length, parity=exported.parity)


# ------------------------------------------------------------------------------------------------ serving


def activate_session(control: ModelControl, repository_dir: Path, version: int, *, retire: bool = True) -> None:
    """Hot-swaps a running server (explicit model control) to session ``version``, ``recsys_c`` last.

    With ``retire``, each step is then reloaded with only ``version`` under its policy, so the previous
    version's scorer stops holding memory (Triton keeps serving a version while it reloads it).
    """
    if version not in session_versions(repository_dir):
        raise ArtifactError(f"{repository_dir}: session version {version} is not complete")
    for model in SESSION_STEP_MODELS:
        control.load_model(model)
    control.load_model(ENSEMBLE_C, config=pinned_session_ensemble_config(repository_dir, version))
    if retire:
        for model in SESSION_STEP_MODELS:
            control.load_model(model, config=only_version_config(repository_dir, model, version))


def load_session(control: ModelControl, repository_dir: Path) -> int:
    """Loads the newest complete session version and ``recsys_c`` pinned to it; returns that version.

    Pinned from the start (not ``latest``), so a later :func:`activate_session` switches atomically.
    """
    available = session_versions(repository_dir)
    if not available:
        raise ArtifactError(f"{repository_dir}: no complete published session version")
    activate_session(control, repository_dir, available[-1], retire=len(available) > 1)
    return available[-1]


__all__ = [
    "PublishedSession",
    "SessionRun",
    "activate_session",
    "load_session",
    "load_session_run",
    "padded_sequences",
    "pinned_session_ensemble_config",
    "publish_session",
    "recent_plays",
    "render_session_repository",
    "sequence_length_of",
    "session_versions",
]
