"""The experiment config: groups -> Triton models and traffic shares, read from YAML/JSON (file or env)."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from gateway.ab import Split
from recsys.core.errors import ConfigError

GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: GroupName
    model: str = Field(min_length=1, description="Triton model (ensemble) that serves this group")
    share: Decimal = Field(gt=0, le=100, decimal_places=2, description="percent of listeners")


class Experiment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "default"
    groups: tuple[Group, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names repeat: {names}")
        total = sum(g.share for g in self.groups)
        if total != 100:
            raise ValueError(f"group shares add up to {total}%, not 100%")
        return self

    @cached_property
    def split(self) -> Split:
        return Split.from_shares([(g.name, int(g.share * 100)) for g in self.groups])

    def assign(self, key: str) -> str:
        return self.split.assign(key)

    def model_of(self, group: str) -> str:
        for g in self.groups:
            if g.name == group:
                return g.model
        raise KeyError(group)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.model for g in self.groups))


def parse_experiment(text: str, source: str) -> Experiment:
    """YAML (a superset of JSON) text -> Experiment; ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text)
        return Experiment.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiment config {source} is not valid YAML/JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"experiment config {source}: {problems}") from None


def load_experiment(path: Path | None = None, inline: str | None = None) -> Experiment:
    """Inline text (``RECSYS_EXPERIMENT``) wins over the file (``RECSYS_EXPERIMENT_FILE``)."""
    if inline:
        return parse_experiment(inline, "RECSYS_EXPERIMENT")
    if path is None:
        raise ConfigError("no experiment config: set RECSYS_EXPERIMENT_FILE or RECSYS_EXPERIMENT")
    try:
        return parse_experiment(path.read_text(), str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read experiment config {path}: {exc.strerror}") from None


def to_json(experiment: Experiment) -> str:
    return json.dumps(experiment.model_dump(mode="json"))
