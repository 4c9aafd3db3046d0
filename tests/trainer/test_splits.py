"""Splits: the anchors' protocol reproduced exactly, temporal ordering, no leakage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recsys.core.errors import ConfigError, DataError
from trainer.data.interactions import from_frame
from trainer.splits import keep_active_users, random_holdout, temporal, validation_split


def _pairs(split) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    return set(zip(split.users.tolist(), split.items.tolist(), strict=True))


@pytest.mark.shared_data
def test_random_holdout_reproduces_anchor_counts(hetrec_split) -> None:  # type: ignore[no-untyped-def]
    train, test = hetrec_split.train, hetrec_split.test
    assert (train.n_users, train.n_items) == (1877, 17617)
    assert (len(train), len(test)) == (74223, 18578)
    assert not (_pairs(train) & _pairs(test))
    per_user = np.bincount(train.users, minlength=train.n_users) + np.bincount(test.users, minlength=train.n_users)
    held = np.bincount(test.users, minlength=train.n_users)
    assert (held == np.ceil(per_user * 0.2 - 1e-9)).all()


def _frame(n_users: int = 6, per_user: int = 10) -> pd.DataFrame:
    rows = [
        {"user": f"u{u}", "item": (u * 3 + i) % 25, "weight": i + 1, "t": 1000 * u + 10 * i}
        for u in range(n_users)
        for i in range(per_user)
    ]
    return pd.DataFrame(rows)


def test_random_holdout_drops_inactive_users_and_is_seeded() -> None:
    frame = pd.concat([_frame(), pd.DataFrame([{"user": "lonely", "item": 1, "weight": 1, "t": 0}])])
    data, _ = from_frame(frame, time_col="t")
    a, b = random_holdout(data, seed=1), random_holdout(data, seed=1)
    assert "lonely" not in a.train.user_ids.to_list()
    assert _pairs(a.test) == _pairs(b.test)
    assert _pairs(random_holdout(data, seed=2).test) != _pairs(a.test)
    assert len(a.test) == 6 * math.ceil(10 * 0.2)


def test_temporal_holds_out_latest_first_plays() -> None:
    data, _ = from_frame(_frame(), time_col="t")
    split = temporal(data)
    assert split.train.timestamps is not None
    assert split.test.timestamps is not None
    for user in range(split.train.n_users):
        latest_train = split.train.timestamps[split.train.users == user].max()
        earliest_test = split.test.timestamps[split.test.users == user].min()
        assert latest_train < earliest_test
    assert len(split.test) == 6 * 2


def test_temporal_needs_timestamps() -> None:
    data, _ = from_frame(_frame())
    with pytest.raises(DataError, match="timestamps"):
        temporal(data)


def test_validation_split_only_uses_training_pairs() -> None:
    data, _ = from_frame(_frame())
    outer = random_holdout(data)
    inner = validation_split(outer.train)
    assert _pairs(inner.train) | _pairs(inner.test) == _pairs(outer.train)
    assert not (_pairs(inner.test) & _pairs(outer.test))
    assert inner.train.n_items == outer.train.n_items


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, float("nan")])
def test_bad_fraction(fraction: float) -> None:
    data, _ = from_frame(_frame())
    with pytest.raises(ConfigError):
        random_holdout(data, fraction=fraction)


def test_splits_carry_each_pairs_plays_for_session_models(small_world) -> None:  # type: ignore[no-untyped-def]
    """A sequence model fits on ``train.events``: exactly the plays of the training pairs, in time order."""
    data = small_world.interactions
    assert data.events is not None
    for split in (random_holdout(data), temporal(data)):
        train, test = split.train, split.test
        assert train.events is not None and test.events is not None  # noqa: PT018
        active = keep_active_users(data, 5).events
        assert active is not None
        assert len(train.events) + len(test.events) == len(active)
        train_pairs = _pairs(train)
        assert set(zip(train.events.users.tolist(), train.events.items.tolist(), strict=True)) == train_pairs
        for user in range(0, train.n_users, 37):
            times = train.events.timestamps[train.events.users == user]
            assert (np.diff(times) >= 0).all()
