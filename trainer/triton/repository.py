"""A Triton model repository on disk: render its configs, find its versions, hot-swap a running server.

Layout: ``<repository>/<model>/config.pbtxt`` for every model of every family, ``<model>/<N>/`` for version N of
each step model (``model.py`` and the files its family names), ``<ensemble>/1/`` (empty: Triton wants one version
folder). Version numbers are one counter for the whole repository: a new version of any family takes the next
number after the highest one any model holds, so a number names one publish everywhere (the S3 manifests, the
rollback recipe, ``MODEL_VERSION`` in answers). A family's version N is complete once all its steps hold N.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from recsys.core.errors import ArtifactError
from serving.contract import CONFIG_FILE, MANIFEST_FILE
from trainer.triton.configs import Flavour, ModelConfig, as_override, flavour_of, only_version, parse, pinned, render
from trainer.triton.family import FAMILIES, Family, Options


class ModelControl(Protocol):
    def load_model(self, name: str, config: str | None = None) -> None: ...


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
    """``family``'s complete versions in ``repository``, ascending."""
    return sorted(set.intersection(*(_numbers(repository / model) for model in family.steps)))


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
    """
    if version not in versions(repository, family):
        raise ArtifactError(f"{repository}: version {version} of the {family.name} models is not complete")
    for model in family.steps:
        control.load_model(model)
    for name in family.ensembles:
        control.load_model(name, config=as_override(pinned(read_config(repository, name), version)))
    if retire:
        for model in family.steps:
            control.load_model(model, config=as_override(only_version(read_config(repository, model), version)))


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


def load_all(control: ModelControl, repository: Path, families: tuple[Family, ...] = FAMILIES) -> dict[str, int]:
    """Loads the newest complete version of every published family, ensembles pinned to it; returns
    family name -> version. Pinned from the start (not ``latest``), so a later :func:`activate` switches
    atomically."""
    loaded = {}
    for family in published_families(repository, families):
        available = versions(repository, family)
        # The policy keeps two versions: retire the older one at once, unless there is only one.
        activate(control, repository, family, available[-1], retire=len(available) > 1)
        loaded[family.name] = available[-1]
    if not loaded:
        raise ArtifactError(f"{repository}: no complete published version (run `recsys publish RUN_DIR` first)")
    return loaded
