"""Hyperparameters: every numeric one has its range in its model's ``BOUNDS``, and NaN, infinity or a value out of
range is refused when the parameters are built, before any fit (issue 15: ``-p regularization=nan`` trained a
model worse than popularity, and it published)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from recsys.core.errors import ConfigError
from trainer.models.base import Bound, Params
from trainer.models.registry import MODELS, model_class
from trainer.tune import SEARCH_SPACES

PARAMS: dict[str, type[Params]] = {name: model_class(name).params_type for name in MODELS}


def _numeric_fields(params: type[Params]) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(params)
        if isinstance(f.default, int | float) and not isinstance(f.default, bool)
    ]


@pytest.mark.parametrize("model", sorted(PARAMS))
def test_every_numeric_hyperparameter_has_a_range(model: str) -> None:
    params = PARAMS[model]
    assert set(_numeric_fields(params)) == set(params.BOUNDS)
    params()  # the defaults lie inside


CASES = [
    (model, name, bad)
    for model, params in sorted(PARAMS.items())
    for name, bound in params.BOUNDS.items()
    for bad in (math.nan, math.inf, -math.inf, bound.low - 1, bound.high + 1)
]


@pytest.mark.parametrize(("model", "name", "bad"), CASES, ids=lambda x: x if isinstance(x, str) else repr(x))
def test_non_finite_and_out_of_range_values_are_refused(model: str, name: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"{name}=.* is out of range: must be a finite number in "):
        PARAMS[model].from_dict({name: bad})


def test_open_ends_are_excluded() -> None:
    bound = Bound(0, 1, low_open=True, high_open=True)
    assert not bound.admits(0)
    assert not bound.admits(1)
    assert bound.admits(0.5)
    assert str(bound) == "(0, 1)"
    assert str(Bound(1, 4096)) == "[1, 4096]"


class _Recorder:
    """An Optuna trial stand-in that records each range a search space asks for."""

    def __init__(self) -> None:
        self.ranges: dict[str, tuple[float, float]] = {}

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        self.ranges[name] = (low, high)
        return low

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        self.ranges[name] = (low, high)
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return choices[0]


@pytest.mark.parametrize("model", sorted(SEARCH_SPACES))
def test_the_tuning_space_lies_inside_the_ranges(model: str) -> None:
    trial = _Recorder()
    SEARCH_SPACES[model](trial)  # type: ignore[arg-type]
    bounds = PARAMS[model].BOUNDS
    assert trial.ranges
    for name, (low, high) in trial.ranges.items():
        assert bounds[name].admits(low), (name, low, bounds[name])
        assert bounds[name].admits(high), (name, high, bounds[name])
