"""Warm start: a retrain that continues from the published run instead of starting over.

Between two retrains most listeners and most of the catalogue stay the same, and so do their factors: the served
model is already most of the way to the new optimum. A warm start therefore

1. aligns the base run's factors with the new data by external id (the new id maps are sorted afresh, so a
   user's row moves; the external id is what stays);
2. appends the users and items the base run never saw, drawn exactly as a cold fit draws them;
3. fits for a fraction of the cold iterations (ALS) or epochs (BPR) from there.

For ALS the first half-sweep already solves every user, old and new, against the known item factors, and the
next one every item, new ones included, so two or three sweeps get close to where fifteen cold ones end. BPR's
sampled steps move old factors little; new users and items need the few epochs it is given. The benchmark
``benchmarks/warm_start.py`` measures both against a cold retrain on the same data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.core.errors import ConfigError
from trainer.artifacts import Run
from trainer.data.interactions import IdMap, IndexArray, Interactions
from trainer.models.base import FactorModel, InitialFactors, Params
from trainer.models.registry import model_class

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FRACTION",
    "FRACTIONS",
    "WarmStart",
    "align_rows",
    "base_positions",
    "default_fraction",
    "warm_params",
    "warm_start",
]

#: Share of the cold iterations/epochs a warm start runs when the model has no measured share of its own.
DEFAULT_FRACTION = 0.2
#: Measured by ``benchmarks/warm_start.py`` (results/warm_start*.md, 20,000 x 10,000): ALS reaches 0.997 x the
#: cold NDCG@10 with 2 of 15 sweeps (0.998 with 3, whose fixed set-up then costs 0.37 x the cold wall time);
#: BPR 0.986 x with 12 of 60 epochs and 0.988 x with 18, so more epochs buy little.
FRACTIONS = {"als": 0.15, "bpr": 0.2}
#: The parameter holding each model's number of passes.
_PASSES = {"als": "iterations", "bpr": "epochs"}


@dataclass(frozen=True)
class WarmStart:
    """The warm-started model and what carried over from the base run."""

    model: FactorModel
    known_users: int
    new_users: int
    known_items: int
    new_items: int
    fit_seconds: float

    def summary(self) -> dict[str, Any]:
        """For the run's metrics.json: how much of the model was continued rather than learned afresh."""
        return {
            "warm_start": True,
            "known_users": self.known_users,
            "new_users": self.new_users,
            "known_items": self.known_items,
            "new_items": self.new_items,
        }


def base_positions(base_ids: IdMap, ids: IdMap) -> IndexArray:
    """Row of each of ``ids`` in the base run (``-1`` for ids the base run never saw).

    Ids compare by value, and as text when one side is integer and the other is not (a log read from PostgreSQL
    holds text ids; a base run trained on a table may hold integers).
    """
    if base_ids.is_integer != ids.is_integer:
        base_ids = IdMap(base_ids.ids.astype(str))
        return base_ids.indices(ids.ids.astype(str))
    return base_ids.indices(ids.ids)


def align_rows(
    base_rows: npt.NDArray[np.float32], positions: IndexArray, fill: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``fill`` with the rows of known ids (``positions >= 0``) replaced by their base rows."""
    if len(positions) != len(fill):
        raise ConfigError(f"{len(positions)} positions for {len(fill)} rows")
    out = np.array(fill, dtype=np.float32, copy=True)
    known = positions >= 0
    out[known] = base_rows[positions[known]]
    return out


def default_fraction(model_name: str) -> float:
    """The share of the cold passes a warm start of this model runs unless told otherwise."""
    return FRACTIONS.get(model_name, DEFAULT_FRACTION)


def warm_params(params: Params, model_name: str, fraction: float) -> Params:
    """The base run's parameters with ``fraction`` of its iterations (ALS) or epochs (BPR), at least one."""
    if not 0 < fraction <= 1 or math.isnan(fraction):
        raise ConfigError(f"warm start fraction must be in (0, 1], got {fraction}")
    field = _PASSES.get(model_name)
    if field is None:
        raise ConfigError(f"a {model_name} run cannot be warm-started (only {', '.join(_PASSES)})")
    passes = int(getattr(params, field))
    return dataclasses.replace(params, **{field: max(1, round(passes * fraction))})


def warm_start(
    base: Run,
    train: Interactions,
    *,
    fraction: float | None = None,
    params: dict[str, Any] | None = None,
    device: str = "cpu",
    show_progress: bool = False,
) -> WarmStart:
    """Fits a model of the base run's kind on ``train``, starting from the base run's factors.

    ``params`` override the base run's parameters (``factors`` must stay: the base's vectors have that size);
    ``fraction`` (default: :func:`default_fraction`) scales the base's iterations/epochs unless ``params`` sets
    them.
    """
    if not isinstance(base.model, FactorModel):
        raise ConfigError(f"a {base.model.name} run cannot be warm-started (only {', '.join(_PASSES)})")
    name = base.model.name
    klass = model_class(name)
    merged = {**base.model.params.to_dict(), **(params or {})}
    chosen = klass.params_type.from_dict(merged)
    if getattr(chosen, "factors", None) != getattr(base.model.params, "factors", None):
        raise ConfigError(f"warm start keeps the base run's factors ({getattr(base.model.params, 'factors', None)})")
    if _PASSES[name] not in (params or {}):
        chosen = warm_params(chosen, name, default_fraction(name) if fraction is None else fraction)
    model = klass(chosen, device=device)
    assert isinstance(model, FactorModel)  # the registry maps a factor run's name to its factor class

    base_users, base_items, base_bias = base.model.factors()
    user_pos = base_positions(base.user_ids, train.user_ids)
    item_pos = base_positions(base.item_ids, train.item_ids)
    if len(base_users) != len(base.user_ids) or len(base_items) != len(base.item_ids):
        raise ConfigError("the base run's model and ids disagree on the number of users or items")
    cold = model.cold_factors(train.n_users, train.n_items)
    bias = None
    if base_bias is not None:
        fill = cold.item_bias if cold.item_bias is not None else np.zeros(train.n_items, dtype=np.float32)
        bias = align_rows(base_bias[:, None], item_pos, fill[:, None])[:, 0]
    initial = InitialFactors(
        user_factors=align_rows(base_users, user_pos, cold.user_factors),
        item_factors=align_rows(base_items, item_pos, cold.item_factors),
        item_bias=bias,
    )
    start = time.perf_counter()
    model.fit(train, show_progress=show_progress, initial=initial)
    seconds = time.perf_counter() - start
    result = WarmStart(
        model=model,
        known_users=int((user_pos >= 0).sum()),
        new_users=int((user_pos < 0).sum()),
        known_items=int((item_pos >= 0).sum()),
        new_items=int((item_pos < 0).sum()),
        fit_seconds=seconds,
    )
    logger.info(
        "warm start of %s: %d known + %d new users, %d known + %d new items, %s, %.2f s",
        name,
        result.known_users,
        result.new_users,
        result.known_items,
        result.new_items,
        f"{_PASSES[name]}={getattr(chosen, _PASSES[name])}",
        seconds,
    )
    return result
