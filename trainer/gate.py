"""The gate of a retraining cycle: the candidate against the served model on the newest window of the log.

Both models rank for the same listeners (those both know, with plays in the window), each excluding what it saw
in training; a window play counts as relevant unless the listener had heard the item before the window (it
could never be recommended). Items one model does not know are relevant all the same: the candidate learning a
new release is exactly what the gate should reward. Skips in the window are negatives: the share of top-k slots
holding an item the listener skipped is reported beside the ranking metrics.

The candidate passes when its NDCG@k is at least ``(1 - tolerance)`` times the served model's, its weights are
finite, and enough listeners were evaluated; otherwise the report says why, and the served version stays.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from recsys.core.errors import ConfigError
from trainer.data.interactions import IdMap
from trainer.models.base import FactorModel, Recommender


@dataclass(frozen=True)
class Window:
    """The newest events of the log, held out of training, by external id (as strings)."""

    users: Sequence[str]
    items: Sequence[str]
    skip_users: Sequence[str] = ()
    skip_items: Sequence[str] = ()

    def relevant(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for user, item in zip(self.users, self.items, strict=True):
            out[user].add(item)
        return out

    def skipped(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for user, item in zip(self.skip_users, self.skip_items, strict=True):
            out[user].add(item)
        return out


@dataclass(frozen=True)
class Ranker:
    """A model with the id maps and training history it ranks with."""

    model: Recommender
    user_ids: IdMap
    item_ids: IdMap
    history: sp.csr_matrix

    def knows(self, user: str) -> bool:
        return self.user_ids.index(user) is not None

    def top(self, users: Sequence[str], k: int) -> list[list[str]]:
        rows = np.array([self.user_ids.index(u) for u in users], dtype=np.int64)
        items, _ = self.model.recommend(rows, k, exclude=self.history)
        ids = self.item_ids.ids.astype(str)
        return [[ids[i] for i in row if i >= 0] for row in items.tolist()]

    def heard(self, user: str) -> set[str]:
        row = self.user_ids.index(user)
        if row is None:
            return set()
        return set(self.item_ids.ids[self.history[row].indices].astype(str).tolist())


def window_metrics(
    ranker: Ranker,
    users: Sequence[str],
    window: Window,
    *,
    k: int = 10,
    heard: Callable[[str], set[str]] | None = None,
) -> dict[str, float]:
    """NDCG@k, recall@k and the skipped share of the top-k for ``users`` on the window's plays; a play counts unless
    the listener had heard the item before the window (``heard``, by default the ranker's own history)."""
    heard = heard or ranker.heard
    relevant, skipped = window.relevant(), window.skipped()
    tops = ranker.top(users, k) if users else []
    ndcg, recall, skip_share = [], [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for user, top in zip(users, tops, strict=True):
        wanted = relevant[user] - heard(user)
        if not wanted:
            continue
        hits = np.array([item in wanted for item in top[:k]] + [False] * (k - len(top[:k])))
        ideal = discounts[: min(len(wanted), k)].sum()
        ndcg.append(float((hits * discounts).sum() / ideal))
        recall.append(float(hits.sum() / min(len(wanted), k)))
        skip_share.append(sum(item in skipped[user] for item in top[:k]) / k)
    return {
        f"ndcg@{k}": float(np.mean(ndcg)) if ndcg else 0.0,
        f"recall@{k}": float(np.mean(recall)) if recall else 0.0,
        f"skipped@{k}": float(np.mean(skip_share)) if skip_share else 0.0,
        "users": float(len(ndcg)),
    }


@dataclass(frozen=True)
class GateReport:
    passed: bool
    reason: str
    served: dict[str, float]
    candidate: dict[str, float]
    tolerance: float
    k: int = 10
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "served": self.served,
            "candidate": self.candidate,
            "tolerance": self.tolerance,
            "k": self.k,
            **self.extra,
        }


def finite_weights(model: Recommender) -> str | None:
    """Which array of a factor model holds NaN/inf, or ``None``."""
    if not isinstance(model, FactorModel):
        return None
    users, items, bias = model.factors()
    for name, array in (("user factors", users), ("item factors", items), ("item bias", bias)):
        if array is not None and not np.isfinite(array).all():
            return name
    return None


def gate(
    served: Ranker,
    candidate: Ranker,
    window: Window,
    *,
    tolerance: float = 0.02,
    min_users: int = 20,
    k: int = 10,
) -> GateReport:
    """Compares ``candidate`` with ``served`` on ``window`` (see the module docstring)."""
    if not 0 <= tolerance < 1 or math.isnan(tolerance):
        raise ConfigError(f"gate tolerance must be in [0, 1), got {tolerance}")
    broken = finite_weights(candidate.model)
    if broken is not None:
        return GateReport(False, f"the candidate's {broken} hold NaN/inf", {}, {}, tolerance, k)
    users = sorted(u for u in window.relevant() if served.knows(u) and candidate.knows(u))

    def heard(user: str) -> set[str]:  # the same target for both: what either model saw the listener play
        return served.heard(user) | candidate.heard(user)

    served_m = window_metrics(served, users, window, k=k, heard=heard)
    candidate_m = window_metrics(candidate, users, window, k=k, heard=heard)
    evaluated = int(min(served_m["users"], candidate_m["users"]))
    key = f"ndcg@{k}"
    if evaluated < min_users:
        reason = f"only {evaluated} listeners with new plays in the window (need {min_users}): no evidence either way"
        return GateReport(False, reason, served_m, candidate_m, tolerance, k)
    floor = served_m[key] * (1.0 - tolerance)
    if candidate_m[key] + 1e-12 < floor:
        reason = (
            f"candidate {key} {candidate_m[key]:.4f} is below the served {served_m[key]:.4f} by more than "
            f"{tolerance:.0%} (floor {floor:.4f})"
        )
        return GateReport(False, reason, served_m, candidate_m, tolerance, k)
    reason = f"candidate {key} {candidate_m[key]:.4f} vs served {served_m[key]:.4f} on {evaluated} listeners"
    return GateReport(True, reason, served_m, candidate_m, tolerance, k)


def as_strings(values: npt.ArrayLike) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]
