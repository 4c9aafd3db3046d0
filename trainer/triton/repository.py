"""A Triton model repository on disk: render its configs, find its versions, hot-swap a running server.

Layout: ``<repository>/<model>/config.pbtxt`` for every model of every family, ``<model>/<N>/`` for version N of
each step model (``model.py`` and the files its family names), ``<ensemble>/1/`` (empty: Triton wants one version
folder). Version numbers are one counter for the whole repository: a new version of any family takes the next
number after the highest one any model holds, so a number names one publish everywhere (the S3 manifests, the
rollback recipe, ``MODEL_VERSION`` in answers). A family's version N is complete once all its required steps hold
N; an optional step (``recsys_scorer_ann``) holds it only when publish built it, and the ensembles over it are
served only then (:func:`version_steps`, :func:`version_ensembles`).

A version's ``publish.json`` records the SHA-256 of every file of every step (:func:`checksums`); a version whose
files no longer match (a truncated ONNX file, a half-copied folder) is refused before Triton sees it
(:func:`verify`), and one that loaded is marked good (:data:`GOOD_FILE`). A start (:func:`load_all`) serves each
family's newest version that is intact and loads, and says which newer ones it refused: a damaged newest version
never leaves the server empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from recsys.core.errors import ArtifactError, RecsysError
from serving.contract import CONFIG_FILE, MANIFEST_FILE
from trainer.triton.configs import Flavour, ModelConfig, as_override, flavour_of, only_version, parse, pinned, render
from trainer.triton.family import FAMILIES, Family, Options

log = logging.getLogger(__name__)

#: beside ``publish.json`` in a version's first step: written once the version loaded (when, first)
GOOD_FILE = "served.json"


class ModelControl(Protocol):
    def load_model(self, name: str, config: str | None = None) -> None: ...


@runtime_checkable
class UnloadingControl(ModelControl, Protocol):
    """A control that can also unload (a Triton server or its control plane; the EKS loop's fan-out cannot)."""

    def unload_model(self, name: str, *, wait: bool = True) -> None: ...

    def is_model_ready(self, name: str, version: str = "") -> bool: ...


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checksums(root: Path, models: Iterable[str]) -> dict[str, dict[str, str]]:
    """model -> file -> SHA-256 of the files in ``root/<model>/`` (a version's folders), without the manifest, the
    good mark and the folders the python stub adds (``__pycache__``)."""
    return {
        model: {
            path.name: file_digest(path)
            for path in sorted((root / model).iterdir())
            if path.is_file() and path.name not in (MANIFEST_FILE, GOOD_FILE)
        }
        for model in models
    }


def verify(repository: Path, family: Family, version: int) -> list[str]:
    """What is wrong with ``version``'s files against its manifest's checksums: empty when they match, or when there
    is no manifest or it records none (written by hand, or published before checksums were kept)."""
    if not (repository / family.steps[0] / str(version) / MANIFEST_FILE).is_file():
        return []
    try:
        recorded = manifest(repository, family, version).get("checksums") or {}
    except ArtifactError as exc:
        return [str(exc)]
    problems = []
    for model, files in recorded.items():
        for name, digest in files.items():
            path = repository / model / str(version) / name
            if not path.is_file():
                problems.append(f"{model}/{version}/{name} is missing")
            elif file_digest(path) != digest:
                problems.append(f"{model}/{version}/{name} does not match its checksum (damaged since publish)")
    return problems


def mark_good(repository: Path, family: Family, version: int) -> None:
    """Records that ``version`` loaded (kept from the first time); a read-only repository is only logged."""
    path = repository / family.steps[0] / str(version) / GOOD_FILE
    if path.exists():
        return
    try:
        path.write_text(json.dumps({"loaded_at": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
    except OSError as exc:
        log.warning("cannot mark version %d of the %s models good: %s", version, family.name, exc)


def good_versions(repository: Path, family: Family) -> list[int]:
    """``family``'s complete versions that have loaded once, ascending."""
    return [v for v in versions(repository, family) if (repository / family.steps[0] / str(v) / GOOD_FILE).is_file()]


def render_repository(
    target: Path,
    flavour: Flavour | str = Flavour.local,
    options: Options | None = None,
    families: tuple[Family, ...] = FAMILIES,
) -> list[Path]:
    """Writes ``config.pbtxt`` of every model of ``families`` in ``flavour`` into ``target``; returns the paths."""
    flavour = flavour_of(flavour)
    written = []
    for family in families:
        for config in family.configs(flavour, options):
            folder = target / config.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CONFIG_FILE).write_text(render(config))
            written.append(folder / CONFIG_FILE)
        ensure_ensemble_versions(target, family)
    return written


def ensure_ensemble_versions(target: Path, family: Family) -> None:
    for name in family.ensembles:
        (target / name / "1").mkdir(parents=True, exist_ok=True)


def read_config(repository: Path, model: str) -> ModelConfig:
    """``model``'s ``config.pbtxt`` as a message (what the server reads, whatever flavour it was rendered in)."""
    path = repository / model / CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (render the repository with `recsys render-repo`)")
    return parse(path.read_text())


def has_configs(repository: Path, family: Family) -> bool:
    return all((repository / name / CONFIG_FILE).is_file() for name in (*family.files, *family.ensembles))


def stale_configs(repository: Path, family: Family) -> list[str]:
    """The family's models whose config on disk wires other tensors or steps than this release renders (a
    repository rendered by an older release, e.g. ``recsys_ann`` before its scorer answered item ids itself): the
    served code would fail on them at inference. Tensor names and ensemble wiring are the same in every flavour,
    so the local rendering is the reference whatever the repository's flavour."""
    rendered = family.configs(Flavour.local, options_of(repository, family))
    return [
        config.name
        for config in rendered
        if (repository / config.name / CONFIG_FILE).is_file()
        and _wiring(read_config(repository, config.name)) != _wiring(config)
    ]


def check_configs(repository: Path, family: Family) -> None:
    """Refuses a repository whose configs of ``family`` are stale (:func:`stale_configs`), saying how to fix it."""
    stale = stale_configs(repository, family)
    if stale:
        raise ArtifactError(
            f"{repository}: the configs of {', '.join(stale)} come from an older release and do not wire what this "
            f"one serves: render them again with `recsys render-repo --out {repository}` (in the flavour the "
            "repository was rendered in), then publish or start again"
        )


def _wiring(config: ModelConfig) -> tuple[object, ...]:
    """What the served code relies on in a config: its tensor names and, for an ensemble, each step and its maps."""
    steps = tuple(
        (step.model_name, tuple(sorted(step.input_map.items())), tuple(sorted(step.output_map.items())))
        for step in config.ensemble_scheduling.step
    )
    return tuple(t.name for t in config.input), tuple(t.name for t in config.output), steps


def options_of(repository: Path, family: Family) -> Options:
    """The options a family was rendered with, read back from its configs (the session lookup's ``L``)."""
    from trainer.triton.family import SESSION, SESSION_LOOKUP, SESSION_SCORER

    if family is not SESSION:
        return Options()
    from serving.contract import ITEM_SEQUENCE

    lookup, scorer = read_config(repository, SESSION_LOOKUP), read_config(repository, SESSION_SCORER)
    emitted = int(lookup.parameters["sequence_length"].string_value)
    taken = next((list(t.dims) for t in scorer.input if t.name == ITEM_SEQUENCE), None)
    if taken != [emitted]:
        raise ArtifactError(
            f"{repository}: {SESSION_LOOKUP} emits {ITEM_SEQUENCE} of length {emitted}, {SESSION_SCORER} takes "
            f"{taken}; render the repository again"
        )
    return Options(sequence_length=emitted)


def _numbers(folder: Path) -> set[int]:
    if not folder.is_dir():
        return set()
    return {int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}


def versions(repository: Path, family: Family) -> list[int]:
    """``family``'s complete versions in ``repository`` (every required step holds them), ascending."""
    return sorted(set.intersection(*(_numbers(repository / model) for model in family.required_steps)))


def version_steps(repository: Path, family: Family, version: int) -> tuple[str, ...]:
    """The steps ``version`` holds: the required ones, and each optional one with a version folder (with files)."""
    return tuple(
        model
        for model in family.steps
        if model not in family.optional_steps or _has_files(repository / model / str(version))
    )


def version_ensembles(repository: Path, family: Family, version: int) -> tuple[str, ...]:
    """The ensembles ``version`` serves: ``recsys_ann`` only when it was published with an approximate index."""
    return family.ensembles_over(version_steps(repository, family, version))


def lacking_ensembles(repository: Path, family: Family, version: int) -> tuple[str, ...]:
    """The family's ensembles that ``version`` does not serve: ``recsys_ann`` when it was published without an
    approximate index. One place decides this for unloading, ``recsys stack status`` and the experiment check."""
    served = version_ensembles(repository, family, version)
    return tuple(name for name in family.ensembles if name not in served)


def why_not_served(family: Family, version: int) -> str:
    """The one message for a lacking ensemble (only ``recsys_ann`` can lack: it is the one optional path)."""
    return (
        f"version {version} of the {family.name} models was published without an approximate index "
        "(recsys publish --ann flat|ivf_flat|hnsw builds one)"
    )


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def next_version(repository: Path) -> int:
    """One counter for the whole repository: after the highest number any model folder holds with files in it
    (ensembles' empty ``1/`` does not count; a publish that died half-way never blocks the next one)."""
    used = {
        int(version.name)
        for model in (repository.iterdir() if repository.is_dir() else ())
        if model.is_dir()
        for version in model.iterdir()
        if version.is_dir() and version.name.isdigit() and any(version.iterdir())
    }
    return max(used) + 1 if used else 1


def manifest(repository: Path, family: Family, version: int) -> dict[str, Any]:
    """The ``publish.json`` of ``family``'s ``version``: which run it came from, parity, metrics, sizes."""
    path = repository / family.steps[0] / str(version) / MANIFEST_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: no readable manifest ({exc})") from exc
    return data


def served_run(repository: Path, family: Family) -> tuple[int, Path]:
    """The newest complete version of ``family`` and the run directory it was published from."""
    available = versions(repository, family)
    if not available:
        raise ArtifactError(f"{repository}: no published version of the {family.name} models")
    run = Path(str(manifest(repository, family, available[-1]).get("run", "")))
    if not run.is_dir():
        raise ArtifactError(f"{repository}: version {available[-1]} was published from {run}, which is gone")
    return available[-1], run


def published_families(repository: Path, families: tuple[Family, ...] = FAMILIES) -> list[Family]:
    """The ``families`` with at least one complete version in ``repository``."""
    return [family for family in families if versions(repository, family)]


def activate(control: ModelControl, repository: Path, family: Family, version: int, *, retire: bool = True) -> None:
    """Hot-swaps a running server (explicit model control) to ``family``'s ``version``, ensembles last.

    The steps load version N beside N-1 (their policy keeps two); each ensemble is then reloaded with every step
    pinned to N, so a request sees all-old or all-new steps, never a mix. With ``retire`` each step is reloaded
    with only N under its policy, so N-1 stops holding memory (Triton keeps serving a version while it reloads
    it). Overrides are built from the repository's own configs, so they match its flavour.

    The models of the family that ``version`` lacks (``recsys_ann`` and its scorer, for a version published
    without an index) are unloaded once the ensembles are swapped, before the retire, where the control can unload:
    left loaded, they would answer from the older version's index, and fail once its steps are retired.
    """
    if version not in versions(repository, family):
        raise ArtifactError(f"{repository}: version {version} of the {family.name} models is not complete")
    problems = verify(repository, family, version)
    if problems:
        raise ArtifactError(f"version {version} of the {family.name} models is damaged: {'; '.join(problems)}")
    steps, ensembles = version_steps(repository, family, version), version_ensembles(repository, family, version)
    for model in steps:
        control.load_model(model)
    for name in ensembles:
        control.load_model(name, config=as_override(pinned(read_config(repository, name), version)))
    unload_lacking(control, repository, family, version)  # before the retire: they are pinned to N-1's steps
    if retire:
        for model in steps:
            control.load_model(model, config=as_override(only_version(read_config(repository, model), version)))
    mark_good(repository, family, version)


def unload_lacking(control: ModelControl, repository: Path, family: Family, version: int) -> None:
    """Unloads the models of ``family`` that ``version`` lacks (``recsys_ann`` and its scorer for a version without
    an index), ensembles first, where they are loaded and the control can unload."""
    steps = version_steps(repository, family, version)
    served = (*family.ensembles_over(steps), *steps)
    lacking = [name for name in (*family.ensembles, *family.steps) if name not in served]
    if lacking and isinstance(control, UnloadingControl):
        for name in lacking:
            if control.is_model_ready(name):
                control.unload_model(name)
    elif lacking:
        log.info("version %d has no %s; this control cannot unload them", version, ", ".join(lacking))


def pin(control: ModelControl, repository: Path, family: Family, version: int) -> None:
    """Loads ``family``'s ``version`` alone (each step's policy keeps only it), then the ensembles pinned to it:
    how a start loads a version, with nothing else of the family tried on the way (nor the models it lacks: no
    ``recsys_ann`` for a version without an approximate index)."""
    for model in version_steps(repository, family, version):
        control.load_model(model, config=as_override(only_version(read_config(repository, model), version)))
    for name in version_ensembles(repository, family, version):
        control.load_model(name, config=as_override(pinned(read_config(repository, name), version)))
    unload_lacking(control, repository, family, version)  # a running server may hold an older version's


def withdraw(control: ModelControl, repository: Path, family: Family, failed: int, previous: int) -> str | None:
    """After version ``failed`` did not load: its folders leave the repository (so no later cycle takes it for the
    served one, and no later load brings it back), and the family is pinned to ``previous`` again. Returns what
    could not be restored, or None."""
    import shutil

    for model in family.steps:
        shutil.rmtree(repository / model / str(failed), ignore_errors=True)
    try:
        activate(control, repository, family, previous)
    except Exception as exc:  # reported, not raised: the caller records the cycle either way
        return f"re-pinning version {previous} failed too: {exc}"
    return None


@dataclass(frozen=True)
class Loaded:
    """What a start serves of one family: ``version``, and each newer version it refused with the reason."""

    version: int
    refused: dict[int, str] = field(default_factory=dict)


def load_newest_good(control: ModelControl, repository: Path, family: Family) -> Loaded:
    """Loads ``family``'s newest version that is intact (:func:`verify`) and loads, newest first, and marks it good;
    each newer one is refused with an error log line naming the reason. ArtifactError when none loads."""
    refused: dict[int, str] = {}
    for version in reversed(versions(repository, family)):
        problems = verify(repository, family, version)
        try:
            if problems:
                raise ArtifactError("; ".join(problems))
            pin(control, repository, family, version)
        except RecsysError as exc:
            refused[version] = str(exc).splitlines()[0]
            log.error("refused version %d of the %s models: %s", version, family.name, refused[version])
            continue
        mark_good(repository, family, version)
        if refused:
            log.warning(
                "serving version %d of the %s models instead of the newer %s, refused (see above)",
                version, family.name, ", ".join(map(str, refused)),
            )  # fmt: skip
        return Loaded(version, refused)
    reasons = "; ".join(f"version {v}: {why}" for v, why in refused.items())
    raise ArtifactError(f"{repository}: no version of the {family.name} models loads ({reasons})")


def load_all(control: ModelControl, repository: Path, families: tuple[Family, ...] = FAMILIES) -> dict[str, int]:
    """Loads the newest intact, loadable version of every published family, each step and ensemble pinned to it
    (not ``latest``, so a later :func:`activate` switches atomically); returns family name -> version. A damaged or
    unloadable newer version is skipped and logged (:func:`load_newest_good`), never left to empty the server."""
    loaded = {family.name: load_newest_good(control, repository, family).version
              for family in published_families(repository, families)}  # fmt: skip
    if not loaded:
        raise ArtifactError(f"{repository}: no complete published version (run `recsys publish RUN_DIR` first)")
    return loaded
