"""Hyperparameter search on a validation split carved from the training part (never the test part).

Optuna's TPE sampler, seeded, so the same call finds the same parameters. The search spaces below are the
ones the shipped defaults were chosen with (see the README's "How the defaults were chosen").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from recsys.core.errors import ConfigError
from trainer.data.interactions import Interactions
from trainer.evaluation import evaluate
from trainer.pipeline import build_model
from trainer.progress import progress_bar
from trainer.splits import validation_split

logger = logging.getLogger(__name__)

SearchSpace = Callable[[optuna.Trial], dict[str, Any]]


def _als_space(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "weighting": trial.suggest_categorical("weighting", ["log1p", "bm25"]),
        "alpha": trial.suggest_float("alpha", 0.05, 20.0, log=True),
        "regularization": trial.suggest_float("regularization", 0.01, 300.0, log=True),
        "iterations": trial.suggest_int("iterations", 5, 30),
    }


def _bpr_space(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 5e-4, 3e-2, log=True),
        "regularization": trial.suggest_float("regularization", 1e-5, 1e-1, log=True),
        "n_candidates": trial.suggest_int("n_candidates", 1, 8),
        "epochs": trial.suggest_int("epochs", 10, 60, step=5),
    }


SEARCH_SPACES: dict[str, SearchSpace] = {"als": _als_space, "bpr": _bpr_space}


@dataclass(frozen=True)
class TuneResult:
    best_params: dict[str, Any]
    best_value: float
    trials: list[dict[str, Any]]


def tune(
    train: Interactions,
    model_name: str,
    *,
    n_trials: int = 30,
    metric: str = "ndcg@10",
    seed: int = 0,
    device: str = "cpu",
    fixed: dict[str, Any] | None = None,
    show_progress: bool = False,
) -> TuneResult:
    """Maximises ``metric`` on a validation part of ``train``; ``fixed`` parameters are not searched."""
    if model_name not in SEARCH_SPACES:
        raise ConfigError(f"no search space for {model_name!r}; tunable: {', '.join(SEARCH_SPACES)}")
    if n_trials < 1:
        raise ConfigError("n_trials must be >= 1")
    name, _, k = metric.partition("@")
    if name not in ("ndcg", "recall", "map", "coverage", "mean_popularity") or k not in ("10", "20"):
        raise ConfigError(f"unknown metric {metric!r}; use ndcg, recall, map, coverage or mean_popularity @10 or @20")
    parts = validation_split(train)
    space = SEARCH_SPACES[model_name]

    def objective(trial: optuna.Trial) -> float:
        params = {**space(trial), **(fixed or {})}
        model = build_model(model_name, params, device=device).fit(parts.train)
        value = evaluate(model, parts.train, parts.test)[metric]
        logger.info("trial %d: %s = %.4f with %s", trial.number, metric, value, params)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    with progress_bar(f"tune {model_name}", n_trials, enabled=show_progress) as advance:
        study.optimize(objective, n_trials=n_trials, callbacks=[lambda _study, _trial: advance()])
    trials = [{"number": t.number, "value": t.value, "params": t.params} for t in study.trials]
    return TuneResult(best_params={**study.best_params, **(fixed or {})}, best_value=study.best_value, trials=trials)
