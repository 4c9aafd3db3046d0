"""Train/test splits. Each returns two :class:`Interactions` over the same id maps.

``random_holdout`` is the protocol of ../shared/notes/anchors.md, reproduced exactly so that our
figures compare with the peers' measured there; ``temporal`` holds out what each user discovered last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from recsys.core.errors import ConfigError, DataError
from trainer.data.interactions import Events, IdMap, Interactions


class SplitKind(StrEnum):
    random_holdout = "random-holdout"
    temporal = "temporal"


@dataclass(frozen=True)
class Split:
    train: Interactions
    test: Interactions


def keep_active_users(data: Interactions, min_interactions: int) -> Interactions:
    """Drops users with fewer than ``min_interactions`` pairs and re-indexes users and items densely."""
    counts = np.bincount(data.users, minlength=data.n_users)
    mask = counts[data.users] >= min_interactions
    if not mask.any():
        raise DataError(f"no user has {min_interactions} or more interactions")
    return compact(data, mask)


def compact(data: Interactions, mask: npt.NDArray[np.bool_]) -> Interactions:
    """Rows under ``mask``, with ids that no longer occur removed from both id maps."""
    users_kept, users = np.unique(data.users[mask], return_inverse=True)
    items_kept, items = np.unique(data.items[mask], return_inverse=True)
    events = data.events_of_pairs(mask)
    if events is not None:  # re-index the kept plays like the pairs
        user_map = np.full(data.n_users, -1, dtype=np.int32)
        user_map[users_kept] = np.arange(len(users_kept), dtype=np.int32)
        item_map = np.full(data.n_items, -1, dtype=np.int32)
        item_map[items_kept] = np.arange(len(items_kept), dtype=np.int32)
        events = Events(user_map[events.users], item_map[events.items], events.timestamps)
    return Interactions(
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        weights=data.weights[mask],
        user_ids=IdMap(data.user_ids.ids[users_kept]),
        item_ids=IdMap(data.item_ids.ids[items_kept]),
        timestamps=None if data.timestamps is None else data.timestamps[mask],
        item_names=None if data.item_names is None else data.item_names[items_kept],
        events=events,
    )


def _holdout_counts(users: npt.NDArray[np.int32], n_users: int, fraction: float) -> npt.NDArray[np.int64]:
    counts = np.bincount(users, minlength=n_users)
    out: npt.NDArray[np.int64] = np.ceil(counts * fraction - 1e-9).astype(np.int64)
    return out


def _rank_within_user(users: npt.NDArray[np.int32], keys: npt.NDArray[np.generic]) -> npt.NDArray[np.int64]:
    """0-based rank of each row among its user's rows, ordered by ``keys`` ascending."""
    order = np.lexsort((keys, users))
    sorted_users = users[order]
    starts = np.searchsorted(sorted_users, sorted_users, side="left")
    ranks = np.empty(len(users), dtype=np.int64)
    ranks[order] = np.arange(len(users)) - starts
    return ranks


def random_holdout(data: Interactions, *, fraction: float = 0.2, seed: int = 42, min_interactions: int = 5) -> Split:
    """Per user, hold out the ``ceil(fraction * n)`` pairs with the smallest ``default_rng(seed)`` draws."""
    _check_fraction(fraction)
    data = keep_active_users(data, min_interactions)
    draws = np.random.default_rng(seed).random(len(data))
    ranks = _rank_within_user(data.users, draws)
    test_mask = ranks < _holdout_counts(data.users, data.n_users, fraction)[data.users]
    return Split(train=data.subset(~test_mask), test=data.subset(test_mask))


def temporal(data: Interactions, *, fraction: float = 0.2, min_interactions: int = 5) -> Split:
    """Per user, hold out the ``ceil(fraction * n)`` items met last (by first-play time).

    Using the first play means the test set holds items that were new to the listener at that time, which is
    what a recommender is for; ties are broken by item index so the split is deterministic.
    """
    _check_fraction(fraction)
    if data.timestamps is None:
        raise DataError("the temporal split needs timestamps; this data has none (use random-holdout)")
    data = keep_active_users(data, min_interactions)
    assert data.timestamps is not None
    keys = data.timestamps.astype(np.float64) * (data.n_items + 1) + data.items
    ranks = _rank_within_user(data.users, -keys)
    test_mask = ranks < _holdout_counts(data.users, data.n_users, fraction)[data.users]
    return Split(train=data.subset(~test_mask), test=data.subset(test_mask))


def validation_split(train: Interactions, *, fraction: float = 0.2, seed: int = 7) -> Split:
    """Carves a validation set out of a training part, so tuning never sees the test set.

    Users and items keep their indices (no compaction), so a model fitted on the result scores the same rows.
    """
    _check_fraction(fraction)
    counts = np.bincount(train.users, minlength=train.n_users)
    draws = np.random.default_rng(seed).random(len(train))
    ranks = _rank_within_user(train.users, draws)
    # Users with a single pair keep it for training.
    n_out = np.where(counts >= 2, np.ceil(counts * fraction - 1e-9), 0).astype(np.int64)
    test_mask = ranks < n_out[train.users]
    return Split(train=train.subset(~test_mask), test=train.subset(test_mask))


def make_split(data: Interactions, kind: SplitKind | str, *, fraction: float = 0.2, seed: int = 42) -> Split:
    kind = split_kind(kind)
    if kind is SplitKind.random_holdout:
        return random_holdout(data, fraction=fraction, seed=seed)
    return temporal(data, fraction=fraction)


def split_kind(value: SplitKind | str) -> SplitKind:
    try:
        return SplitKind(value)
    except ValueError:
        raise ConfigError(f"unknown split {value!r}; choose one of: {', '.join(k.value for k in SplitKind)}") from None


def _check_fraction(fraction: float) -> None:
    if not (0.0 < fraction < 1.0) or math.isnan(fraction):
        raise ConfigError(f"holdout fraction must be in (0, 1), got {fraction}")
