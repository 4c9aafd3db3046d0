"""The synthetic world has the traits it promises: seeded, power-law popular, few genres, sequential."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recsys.core.errors import ConfigError
from trainer.data.interactions import IndexArray
from trainer.data.synthetic import SyntheticConfig, SyntheticWorld, generate, generate_counts

SMALL = SyntheticConfig(n_users=400, n_items=2_000, n_genres=12, seed=7)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return generate(SMALL)


def _session_pairs(world: SyntheticWorld) -> tuple[IndexArray, IndexArray]:
    """Consecutive plays of the same session: same user, at most ten minutes apart."""
    events = world.interactions.events
    assert events is not None
    same = (events.users[1:] == events.users[:-1]) & (np.diff(events.timestamps) <= 600)
    return events.items[:-1][same], events.items[1:][same]


def test_same_seed_same_world_other_seed_other_world() -> None:
    config = dataclasses.replace(SMALL, n_users=100, n_items=300)
    first, again = generate(config), generate(config)
    for name in ("users", "items", "weights", "timestamps"):
        np.testing.assert_array_equal(getattr(first.interactions, name), getattr(again.interactions, name))
    assert first.interactions.events is not None
    assert again.interactions.events is not None
    np.testing.assert_array_equal(first.interactions.events.items, again.interactions.events.items)
    np.testing.assert_array_equal(first.user_taste, again.user_taste)
    other = generate(dataclasses.replace(config, seed=8))
    assert other.interactions.events is not None
    assert not np.array_equal(other.interactions.events.items[:200], first.interactions.events.items[:200])


def test_shape_ids_and_names(world: SyntheticWorld) -> None:
    data = world.interactions
    assert (data.n_users, data.n_items) == (SMALL.n_users, SMALL.n_items)  # unplayed items are kept too
    np.testing.assert_array_equal(data.user_ids.ids, np.arange(1, SMALL.n_users + 1))
    np.testing.assert_array_equal(data.item_ids.ids, np.arange(1, SMALL.n_items + 1))
    assert data.events is not None
    assert data.weights.sum() == len(data.events)  # weights are play counts
    expected = SMALL.n_users * SMALL.mean_sessions_per_user * SMALL.mean_session_length
    assert 0.9 * expected < len(data.events) < 1.1 * expected
    assert data.item_label(122) == f"genre{world.item_genre[122]:02d}-artist0123"
    assert world.user_taste.shape == (SMALL.n_users, SMALL.n_genres)
    np.testing.assert_allclose(world.user_taste.sum(axis=1), 1.0, rtol=1e-5)


def test_popularity_is_power_law(world: SyntheticWorld) -> None:
    events = world.interactions.events
    assert events is not None
    plays = np.sort(np.bincount(events.items, minlength=SMALL.n_items))[::-1]
    top_share = plays[: SMALL.n_items // 100].sum() / plays.sum()
    assert top_share > 0.15  # 1% of items, uniform would be 0.01
    genre_sizes = np.sort(np.bincount(world.item_genre))[::-1]
    assert genre_sizes[0] > 5 * genre_sizes[-1]


def test_users_listen_to_few_genres(world: SyntheticWorld) -> None:
    events = world.interactions.events
    assert events is not None
    per_user_genre = np.zeros((SMALL.n_users, SMALL.n_genres))
    np.add.at(per_user_genre, (events.users, world.item_genre[events.items]), 1)
    top3 = np.sort(per_user_genre, axis=1)[:, -3:].sum(axis=1) / per_user_genre.sum(axis=1)
    assert top3.mean() > 0.8


def test_sessions_follow_genre_order(world: SyntheticWorld) -> None:
    before, after = _session_pairs(world)
    neighbours = world.item_next[before] == after
    assert abs(neighbours.mean() - SMALL.p_sequential) < 0.05
    assert np.all(world.item_genre[before] == world.item_genre[after])  # a session keeps its genre
    shuffled = generate(dataclasses.replace(SMALL, n_users=100, p_sequential=0.0))
    before, after = _session_pairs(shuffled)
    assert (shuffled.item_next[before] == after).mean() < 0.1


def test_item_next_walks_each_genre_as_one_cycle(world: SyntheticWorld) -> None:
    assert np.all(world.item_genre[world.item_next] == world.item_genre)
    assert len(np.unique(world.item_next)) == SMALL.n_items  # a permutation
    genre = int(world.item_genre[0])
    size = int((world.item_genre == genre).sum())
    item, seen = 0, set()
    for _ in range(size):
        seen.add(item)
        item = int(world.item_next[item])
    assert item == 0
    assert len(seen) == size


def test_times_increase_within_each_user_and_span_the_period(world: SyntheticWorld) -> None:
    events = world.interactions.events
    assert events is not None
    same_user = events.users[1:] == events.users[:-1]
    assert np.all(np.diff(events.timestamps)[same_user] > 0)
    assert np.all(np.diff(events.users) >= 0)
    span = events.timestamps.max() - events.timestamps.min()
    assert 80 * 86_400 < span <= SMALL.days * 86_400
    assert events.timestamps.min() >= SMALL.start_time
    gaps = np.diff(events.timestamps)[same_user]
    assert 180 < np.median(gaps) < 240  # about 3.5 minutes between plays of a session
    data = world.interactions
    assert data.timestamps is not None
    first_play = np.full((SMALL.n_users, SMALL.n_items), np.iinfo(np.int64).max)
    np.minimum.at(first_play, (events.users, events.items), events.timestamps)
    np.testing.assert_array_equal(data.timestamps, first_play[data.users, data.items])


def test_preference_follows_taste(world: SyntheticWorld) -> None:
    user = 3
    favourite = int(np.argmax(world.user_taste[user]))
    liked = np.flatnonzero(world.item_genre == favourite)[:5]
    unliked_genre = int(np.argmin(world.user_taste[user]))
    unliked = np.flatnonzero(world.item_genre == unliked_genre)[:5]
    np.testing.assert_allclose(world.preference(user, liked), SMALL.like_ceiling)
    assert np.all(world.preference(user, unliked) < 0.05)
    everything = world.preference(user, np.arange(SMALL.n_items))
    assert everything.min() >= SMALL.like_floor
    assert everything.max() <= SMALL.like_ceiling
    with pytest.raises(IndexError):
        world.preference(user, [SMALL.n_items])


@pytest.mark.parametrize(
    "change",
    [{"n_users": 0}, {"n_items": 5, "n_genres": 6}, {"p_sequential": 1.5}, {"taste_concentration": 0.0}],
)
def test_bad_config_is_a_config_error(change: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="synthetic config"):
        SyntheticConfig(**change)  # type: ignore[arg-type]


def test_tiny_worlds_work() -> None:
    one = generate(SyntheticConfig(n_users=1, n_items=1, n_genres=1, mean_sessions_per_user=1))
    assert one.interactions.n_items == 1
    assert one.interactions.events is not None
    assert set(one.interactions.events.items.tolist()) == {0}


def test_counts_world_has_the_same_shape_in_chunks() -> None:
    """generate_counts: the kind of world generate makes (all users and items kept, ~the configured plays,
    popularity skewed), built chunk by chunk; the same config and chunk size give the same world."""
    config = SyntheticConfig(n_users=3_000, n_items=4_000, n_genres=10, seed=5)
    counts = generate_counts(config, chunk_users=700)
    assert (counts.n_users, counts.n_items) == (3_000, 4_000)
    assert counts.user_ids.index(1) == 0
    assert counts.item_ids.index(4_000) == 3_999
    pairs = counts.users.astype(np.int64) * counts.n_items + counts.items
    assert len(np.unique(pairs)) == len(pairs)  # one row per distinct pair
    plays = counts.weights.sum()
    expected = config.n_users * config.mean_sessions_per_user * config.mean_session_length
    assert 0.9 * expected < plays < 1.1 * expected
    assert len(np.unique(counts.users)) == config.n_users  # every listener plays at least one session
    per_item = np.bincount(counts.items, weights=counts.weights, minlength=config.n_items)
    top = np.sort(per_item)[::-1]
    assert top[: config.n_items // 100].sum() > 0.1 * plays  # the top 1% of items take over 10% of plays
    again = generate_counts(config, chunk_users=700)
    assert np.array_equal(again.users, counts.users)
    assert np.array_equal(again.weights, counts.weights)
    with pytest.raises(ConfigError, match="chunk_users"):
        generate_counts(config, chunk_users=0)
