"""Publish a trained run as a new numbered version of its family's models in a Triton model repository.

A version is written into a staging folder inside the repository and appears only by renames once the exports
passed parity, so a refused publish leaves the repository untouched. :func:`trainer.triton.repository.activate`
then hot-swaps a running server to it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.core.errors import ArtifactError, QualityGateError
from serving.contract import MANIFEST_FILE, METRICS_FILE, MODEL_CODE_FILE
from trainer.ann import INHERIT, POLICY_KINDS, AnnPolicy
from trainer.triton.family import Family, family_for_model
from trainer.triton.repository import (
    check_configs,
    checksums,
    ensure_ensemble_versions,
    has_configs,
    next_version,
    options_of,
)
from trainer.triton.repository import manifest as version_manifest
from trainer.triton.repository import render_repository as render
from trainer.triton.repository import versions as complete_versions

if TYPE_CHECKING:  # this module imports no torch: the family's export does, when it runs
    from collections.abc import Mapping, Sequence

    from trainer.exporting import ParityReport

logger = logging.getLogger(__name__)

#: The committed model code (``triton_models/<name>/model.py``); publish copies it into each version.
SOURCE_REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


@dataclass(frozen=True)
class Published:
    family: Family
    version: int
    repository: Path
    parity: ParityReport
    steps: tuple[str, ...] = ()  # the step models the version holds (the optional ones only when exported)

    @property
    def ensembles(self) -> tuple[str, ...]:
        """The ensembles this version serves (``recsys_ann`` only when it has an approximate index)."""
        return self.family.ensembles_over(self.steps or self.family.steps)


def run_family(run_dir: Path) -> Family:
    """The family that serves the run in ``run_dir`` (from its ``metrics.json``)."""
    try:
        model = json.loads((run_dir / METRICS_FILE).read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{run_dir}: no readable {METRICS_FILE} naming its model ({exc})") from exc
    return family_for_model(str(model))


#: The metric a run must not lose to its own popularity baseline to be published (``recsys publish``).
GATE_METRIC = "ndcg@10"


def check_beats_popularity(run_dir: Path) -> None:
    """Refuses a run whose recorded ``ndcg@10`` (its ``metrics.json``) is below its own popularity baseline's on
    the same split, or is not a number: serving it would be worse than serving nothing personal (a NaN
    hyperparameter once trained such a run). A run without a recorded evaluation (fitted from Python, a popularity
    run) has nothing to compare and passes; ``recsys publish --force`` skips the check."""
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{run_dir}: no readable {METRICS_FILE} ({exc})") from exc
    baseline = metrics.get("baseline_popularity")
    if not isinstance(baseline, dict) or GATE_METRIC not in baseline or metrics.get("model") == "popularity":
        return
    ours, theirs = metrics.get(GATE_METRIC), baseline[GATE_METRIC]
    if not isinstance(ours, int | float) or not math.isfinite(ours) or ours < theirs:
        raise QualityGateError(
            f"{run_dir}: its {GATE_METRIC} {ours} is below its popularity baseline's {theirs} on the same split; "
            "nothing published (pass --force to publish it anyway)"
        )


def publish(
    run_dir: Path,
    repository: Path,
    *,
    version: int | None = None,
    family: Family | None = None,
    ann: AnnPolicy | None = None,
) -> Published:
    """Exports the run, checks parity, and writes version ``version`` (default: the repository's next number) of
    every step of its family (``family``: the run's own by default, or a renamed instance of it); renders the
    family's configs (local flavour) where they are missing. ``ann``: the factor family's approximate index
    (kind, recall gate; ``trainer.ann``); None, or kind ``inherit``, keeps the lineage's choice
    (:func:`inherited_kind`)."""
    own = run_family(run_dir)
    family = family or own
    if family.models != own.models:
        raise ArtifactError(f"{run_dir}: a {own.name} run cannot be published as the {family.name} models")
    repository.mkdir(parents=True, exist_ok=True)
    if not has_configs(repository, family):
        render(repository, families=(family,))
    check_configs(repository, family)
    ensure_ensemble_versions(repository, family)
    policy = ann or AnnPolicy(kind=INHERIT)
    if policy.kind == INHERIT:
        policy = replace(policy, kind=inherited_kind(repository, (family, own) if family is not own else (family,)))
    options = replace(options_of(repository, family), ann=policy)
    number = next_version(repository) if version is None else version
    if number < 1 or any((repository / model / str(number)).exists() for model in family.steps):
        raise ArtifactError(f"{repository}: version {number} already exists or is not >= 1")

    with tempfile.TemporaryDirectory(dir=repository, prefix=".publish-") as tmp:
        staging = Path(tmp)
        exported = family.export(run_dir, staging / "export", options)
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        manifest = {
            "version": number,
            "family": family.name,
            "run": str(run_dir.resolve()),
            "model": metrics.get("model"),
            **exported.manifest,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
            # A run trained on the feedback log: the live fold-in folds in only what came after its data.
            "log_until": (metrics.get("log") or {}).get("until"),
            "parity": asdict(exported.parity),
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        held = held_steps(family, exported.files)
        linked: set[Path] = set()  # exported files already placed in a step's folder
        for model in held:
            files = family.files[model]
            folder = staging / model
            folder.mkdir()
            shutil.copy2(model_code(family.source_of(model)), folder / MODEL_CODE_FILE)
            for name in files:
                source = exported.files[name]
                if source.exists() or name not in family.optional_files:
                    place(source, folder / name, link=source.is_relative_to(staging) and source not in linked)
                    linked.add(source)
        shutil.copy2(run_dir / METRICS_FILE, staging / family.steps[0] / METRICS_FILE)
        # every file's SHA-256: a start serves only a version whose files still match (repository.verify)
        manifest["checksums"] = checksums(staging, held)
        for model in held:
            (staging / model / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        # Optional steps first: a version counts as complete once its required steps are in place, so a reader
        # (a start's load_all, a swap) must never see it complete while its index is still on the way.
        for model in sorted(held, key=lambda step: step not in family.optional_steps):
            (staging / model).rename(repository / model / str(number))
    logger.info("published version %d of the %s models (%s) into %s", number, family.name, ", ".join(held), repository)
    return Published(family=family, version=number, repository=repository, parity=exported.parity, steps=held)


def inherited_kind(repository: Path, lineages: Sequence[Family]) -> str:
    """The index policy of a publish that does not choose one (``inherit``: the loop's retrain, new items, canary
    and promote; the S3 seed; ``recsys publish`` without ``--ann`` or ``RECSYS_ANN_KIND``): the policy the newest
    version of the first lineage that has one was published with (a canary's own, else its base family's), else
    ``auto``. Without it, a retrain of a version published with ``--ann hnsw`` would drop ``recsys_ann`` from under
    the groups routed to it, and one published with ``--ann none`` would build an index at the next retrain."""
    for lineage in lineages:
        newest = complete_versions(repository, lineage)
        if not newest:
            continue
        try:
            record = version_manifest(repository, lineage, newest[-1])
        except ArtifactError:
            continue
        asked = record.get("ann_policy")
        if asked is None:  # published before the policy was recorded: the kind of its index, if it has one
            asked = (record.get("ann") or {}).get("kind", "auto")
        return str(asked) if asked in POLICY_KINDS and asked != INHERIT else "auto"
    return "auto"


def held_steps(family: Family, exported: Mapping[str, Path]) -> tuple[str, ...]:
    """The steps a version gets: every required one, and each optional one whose files the export all wrote
    (``recsys_scorer_ann`` only with an index)."""
    return tuple(
        model
        for model, files in family.files.items()
        if model not in family.optional_steps or all(name in exported and exported[name].exists() for name in files)
    )


def place(source: Path, target: Path, *, link: bool) -> None:
    """Puts a file into a step's version folder. ``link``: by a hard link, for the first step to take a file the
    export wrote (the export folder is deleted after publish, so this is a move, not a second 2.6 GB write at 10M
    items); the others, and a run's own files, get copies, so every folder keeps files of its own."""
    if link:
        try:
            os.link(source, target)
            return
        except OSError:  # a file system without hard links
            pass
    shutil.copy2(source, target)


def model_code(model: str) -> Path:
    path = (SOURCE_REPOSITORY / model / MODEL_CODE_FILE).resolve()
    if not path.is_file():
        raise ArtifactError(f"model code {path} is missing from the checkout")
    return path


__all__ = [
    "SOURCE_REPOSITORY",
    "Published",
    "complete_versions",
    "held_steps",
    "inherited_kind",
    "model_code",
    "publish",
    "run_family",
]
