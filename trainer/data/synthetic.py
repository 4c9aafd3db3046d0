"""A seeded, music-like listening world: the project's default data set and the ground truth of simulations.

Real listening data has a few traits that recommenders live on, and this generator builds each in on purpose:

* item popularity follows a power law (Zipf), so a few hits take a large share of plays;
* items belong to genres whose sizes also follow a power law;
* each listener's taste is a sparse Dirichlet mixture over genres (most like one to three genres);
* listening comes in sessions of one genre, and within a session the next play is, with probability
  ``p_sequential``, the item after the current one in that genre's fixed order (an album or playlist order,
  which session models can learn), otherwise a popularity-weighted draw from the genre;
* sessions fall at random times over ``days`` days, plays about 3.5 minutes apart, and a user's sessions
  never overlap, so each user's events in time order read session by session.

Everything is vectorized numpy: there is no Python loop per user or per play, so millions of plays take
seconds. External ids are integers: users ``1..n_users`` and items ``1..n_items``; index ``i`` of every
ground-truth array is the item with id ``i + 1``, and the returned :class:`Interactions` keep all users and
all items (even unplayed ones) in that order, so model indices and ground-truth indices are the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.core.errors import ConfigError
from trainer.data.interactions import FloatArray, IdMap, IndexArray, Interactions, from_frame

SECONDS_PER_DAY = 86_400
# Plays are 150..270 s apart (3.5 minutes on average); sessions are at least half an hour apart.
_PLAY_GAP_RANGE = (150, 271)
_SESSION_BREAK = 1_800


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic world; the defaults make a small, quick, clearly structured data set."""

    n_users: int = 2_000
    n_items: int = 5_000
    n_genres: int = 20
    mean_sessions_per_user: float = 8.0
    mean_session_length: float = 12.0
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity by rank
    genre_size_exponent: float = 1.0  # Zipf exponent of genre sizes by rank
    taste_concentration: float = 0.1  # Dirichlet alpha of each user's genre mixture: small means few genres
    p_sequential: float = 0.6  # chance the next play is the next item in the genre's order
    days: float = 90.0
    start_time: int = 1_700_000_000  # epoch seconds of the first possible play (2023-11-14)
    like_floor: float = 0.01  # chance a listener likes an item of a genre they never play
    like_ceiling: float = 0.5  # chance a listener likes an item of their favourite genre
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "n_users must be >= 1": self.n_users >= 1,
            "n_genres must be >= 1": self.n_genres >= 1,
            "n_items must be >= n_genres": self.n_items >= self.n_genres,
            "mean_sessions_per_user must be >= 1": self.mean_sessions_per_user >= 1,
            "mean_session_length must be >= 1": self.mean_session_length >= 1,
            "popularity_exponent must be >= 0": self.popularity_exponent >= 0,
            "genre_size_exponent must be >= 0": self.genre_size_exponent >= 0,
            "taste_concentration must be > 0": self.taste_concentration > 0,
            "p_sequential must be in [0, 1]": 0 <= self.p_sequential <= 1,
            "days must be > 0": self.days > 0,
            "like_floor and like_ceiling must satisfy 0 <= floor <= ceiling <= 1": (
                0 <= self.like_floor <= self.like_ceiling <= 1
            ),
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ConfigError(f"synthetic config: {failed[0]}")


@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """The generated plays together with the truth behind them, for evaluation and simulated listeners."""

    config: SyntheticConfig
    item_genre: IndexArray  # genre of each item
    # Popularity weight of each item (sums to 1): a non-sequential play picks within the session's genre in
    # proportion to it, so it ranks items within a genre; overall play shares also depend on genre tastes.
    item_popularity: npt.NDArray[np.float64]
    item_next: IndexArray  # the item after each one in its genre's fixed order (wraps around)
    user_taste: FloatArray  # n_users x n_genres, each row a probability mixture over genres
    interactions: Interactions  # play counts, first-play times and every play as events

    @property
    def n_users(self) -> int:
        return self.config.n_users

    @property
    def n_items(self) -> int:
        return self.config.n_items

    def preference(self, user_index: int, item_indices: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The true chance that the user likes (would click or play) each item.

        It depends on genre only: ``floor + (ceiling - floor) * taste[genre] / max(taste)``, so items of the
        user's favourite genre are liked with ``like_ceiling`` and those of genres never played with
        ``like_floor``. Popularity already drives what is played; leaving it out here keeps the simulated
        feedback from rewarding popularity alone.
        """
        if not 0 <= user_index < self.n_users:
            raise IndexError(f"user index {user_index} out of range 0..{self.n_users - 1}")
        items = np.asarray(item_indices, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise IndexError(f"item indices out of range 0..{self.n_items - 1}")
        taste = self.user_taste[user_index].astype(np.float64)
        relative = taste[self.item_genre[items]] / taste.max()
        floor, ceiling = self.config.like_floor, self.config.like_ceiling
        result: npt.NDArray[np.float64] = floor + (ceiling - floor) * relative
        return result


def generate(config: SyntheticConfig | None = None) -> SyntheticWorld:
    """Builds the world of ``config`` (default: :class:`SyntheticConfig`); one seed, one world."""
    config = config or SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    catalogue = _Catalogue.draw(rng, config)
    taste = _dirichlet_rows(rng, config.n_users, config.n_genres, config.taste_concentration)
    event_user, event_item, timestamps = _plays(rng, config, catalogue, taste)
    return SyntheticWorld(
        config=config,
        item_genre=catalogue.item_genre,
        item_popularity=catalogue.popularity,
        item_next=catalogue.item_next,
        user_taste=taste,
        interactions=_interactions(config, event_user, event_item, timestamps, catalogue.item_genre),
    )


@dataclass(frozen=True, eq=False)
class _Catalogue:
    """The items: genre, popularity, and each genre's fixed order laid out genre after genre."""

    item_genre: IndexArray
    popularity: npt.NDArray[np.float64]
    genre_items: IndexArray  # items grouped by genre, each genre in its fixed order
    genre_start: npt.NDArray[np.int64]  # where each genre's run starts in genre_items
    genre_sizes: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]  # each item's place in its genre's order
    item_next: IndexArray

    @classmethod
    def draw(cls, rng: np.random.Generator, config: SyntheticConfig) -> _Catalogue:
        genre_sizes = _zipf_sizes(config.n_items, config.n_genres, config.genre_size_exponent)
        item_genre = rng.permutation(np.repeat(np.arange(config.n_genres), genre_sizes)).astype(np.int32)
        rank = rng.permutation(config.n_items) + 1
        popularity = rank.astype(np.float64) ** -config.popularity_exponent
        popularity /= popularity.sum()
        genre_items = np.lexsort((rng.random(config.n_items), item_genre)).astype(np.int32)
        genre_start = np.concatenate(([0], np.cumsum(genre_sizes)[:-1]))
        position = np.empty(config.n_items, dtype=np.int64)
        position[genre_items] = np.arange(config.n_items) - genre_start[item_genre[genre_items]]
        item_next = genre_items[genre_start[item_genre] + (position + 1) % genre_sizes[item_genre]]
        return cls(item_genre, popularity, genre_items, genre_start, genre_sizes, position, item_next)

    def advance(self, items: npt.NDArray[np.int64], steps: npt.NDArray[np.int64]) -> IndexArray:
        """The item ``steps`` places after each item in its genre's order (wrapping around)."""
        genre = self.item_genre[items]
        size = self.genre_sizes[genre]
        slot = self.genre_start[genre] + (self.position[items] + steps) % size
        result: IndexArray = self.genre_items[slot]
        return result


def generate_counts(config: SyntheticConfig | None = None, *, chunk_users: int = 50_000) -> Interactions:
    """The play counts of a world of ``config``'s kind, built ``chunk_users`` listeners at a time: no times, no
    events, no item names, so memory follows the distinct (user, item) pairs (12 bytes each) rather than the plays.

    For catalogue- and audience-scale benchmarks (1M listeners x 10M items x 100M plays), where :func:`generate`
    would hold every play with its timestamp in pandas (~18 GB at 100M plays). Same catalogue, tastes and
    sessions as :func:`generate` draws, but not the same random stream, so the two give different worlds for
    one seed; the result keeps all users and all items, ids ``1..n`` at index ``id - 1``.
    """
    config = config or SyntheticConfig()
    if chunk_users < 1:
        raise ConfigError(f"chunk_users must be >= 1, got {chunk_users}")
    rng = np.random.default_rng(config.seed)
    catalogue = _Catalogue.draw(rng, config)
    cdf = _genre_cdf(catalogue.popularity, catalogue.genre_items, catalogue.genre_sizes)
    users, items, counts = [], [], []
    for start in range(0, config.n_users, chunk_users):
        size = min(chunk_users, config.n_users - start)
        taste = _dirichlet_rows(rng, size, config.n_genres, config.taste_concentration)
        session_user, session_genre, _, event_session, session_first = _sessions(rng, config, taste)
        event_item = _session_items(rng, config, catalogue, session_genre[event_session], session_first, cdf=cdf)
        pairs, count = np.unique(session_user[event_session] * config.n_items + event_item, return_counts=True)
        del event_item, event_session
        users.append((pairs // config.n_items + start).astype(np.int32))
        items.append((pairs % config.n_items).astype(np.int32))
        counts.append(count.astype(np.float32))
    return Interactions(
        users=np.concatenate(users),
        items=np.concatenate(items),
        weights=np.concatenate(counts),
        user_ids=IdMap(np.arange(1, config.n_users + 1)),
        item_ids=IdMap(np.arange(1, config.n_items + 1)),
    )


def _sessions(
    rng: np.random.Generator, config: SyntheticConfig, taste: FloatArray
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], IndexArray, npt.NDArray[np.int64]]:
    """For ``taste``'s listeners: each session's user, genre and length, each play's session, each session's
    first play."""
    sessions_per_user = 1 + rng.poisson(config.mean_sessions_per_user - 1, len(taste))
    session_user = np.repeat(np.arange(len(taste)), sessions_per_user)
    session_genre = _draw_rows(rng, taste, session_user)
    session_length = 1 + rng.poisson(config.mean_session_length - 1, len(session_user))
    session_first = np.concatenate(([0], np.cumsum(session_length)[:-1]))
    event_session = np.repeat(np.arange(len(session_user), dtype=np.int32), session_length)
    return session_user, session_genre, session_length, event_session, session_first


def _plays(
    rng: np.random.Generator, config: SyntheticConfig, catalogue: _Catalogue, taste: FloatArray
) -> tuple[IndexArray, IndexArray, npt.NDArray[np.int64]]:
    """User, item and time of every play, grouped by session (its own function so temporaries die early)."""
    session_user, session_genre, session_length, event_session, session_first = _sessions(rng, config, taste)
    event_item = _session_items(rng, config, catalogue, session_genre[event_session], session_first)
    timestamps = _timestamps(rng, config, session_user, session_length, event_session, session_first)
    return session_user[event_session].astype(np.int32), event_item, timestamps


def _session_items(
    rng: np.random.Generator,
    config: SyntheticConfig,
    catalogue: _Catalogue,
    event_genre: npt.NDArray[np.int64],
    session_first: npt.NDArray[np.int64],
    *,
    cdf: npt.NDArray[np.float64] | None = None,
) -> IndexArray:
    """The item of every play.

    A play is a jump (a popularity-weighted draw in the session's genre) at every session start and with
    chance ``1 - p_sequential`` elsewhere; between jumps each play is the next item in genre order. So a
    play's item is the last jump's item moved on by the number of plays since that jump: no loop needed.
    """
    n_events = len(event_genre)
    is_jump = rng.random(n_events) >= config.p_sequential
    is_jump[session_first] = True
    jump_at = np.flatnonzero(is_jump)
    if cdf is None:
        cdf = _genre_cdf(catalogue.popularity, catalogue.genre_items, catalogue.genre_sizes)
    jump_item = _draw_in_genre(rng, cdf, catalogue, event_genre[jump_at])
    last_jump = np.zeros(n_events, dtype=np.int64)
    last_jump[jump_at] = jump_at
    np.maximum.accumulate(last_jump, out=last_jump)
    steps = np.arange(n_events) - last_jump
    del last_jump
    return catalogue.advance(jump_item[np.cumsum(is_jump) - 1], steps)


def _zipf_sizes(total: int, parts: int, exponent: float) -> npt.NDArray[np.int64]:
    """Splits ``total`` into ``parts`` power-law sizes, largest first, each at least 1."""
    weights = np.arange(1, parts + 1, dtype=np.float64) ** -exponent
    spare = total - parts
    sizes = np.floor(weights / weights.sum() * spare).astype(np.int64)
    sizes[: spare - int(sizes.sum())] += 1
    result: npt.NDArray[np.int64] = sizes + 1
    return result


def _dirichlet_rows(rng: np.random.Generator, rows: int, cols: int, alpha: float) -> FloatArray:
    """Dirichlet(alpha) rows through gamma draws; a row that underflows to all zeros gets one random genre."""
    draws = rng.standard_gamma(alpha, size=(rows, cols))
    totals = draws.sum(axis=1)
    empty = totals <= 0
    if empty.any():
        draws[np.flatnonzero(empty), rng.integers(0, cols, int(empty.sum()))] = 1.0
        totals = draws.sum(axis=1)
    result: FloatArray = (draws / totals[:, None]).astype(np.float32)
    return result


def _draw_rows(
    rng: np.random.Generator, probabilities: FloatArray, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """One column per entry of ``rows``, drawn from that row of ``probabilities`` (inverse CDF, one search).

    Row ``r``'s cumulative probabilities are shifted by ``r`` so that all rows form one sorted array.
    """
    n_rows, n_cols = probabilities.shape
    cdf = np.cumsum(probabilities.astype(np.float64), axis=1)
    cdf /= cdf[:, -1:]
    flat = (cdf + np.arange(n_rows)[:, None]).ravel()
    found = np.searchsorted(flat, rows + rng.random(len(rows)), side="right")
    return np.clip(found - rows * n_cols, 0, n_cols - 1)


def _genre_cdf(
    popularity: npt.NDArray[np.float64], genre_items: IndexArray, genre_sizes: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Within-genre cumulative popularity in ``genre_items`` order, shifted by the genre number (sorted)."""
    genre_of_slot = np.repeat(np.arange(len(genre_sizes)), genre_sizes)
    weights = popularity[genre_items]
    running = np.cumsum(weights)
    genre_end = np.cumsum(genre_sizes) - 1
    genre_total = np.add.reduceat(weights, np.concatenate(([0], genre_end[:-1] + 1)))
    before = np.concatenate(([0.0], running[genre_end[:-1]]))
    cdf = (running - before[genre_of_slot]) / genre_total[genre_of_slot]
    cdf[genre_end] = 1.0
    result: npt.NDArray[np.float64] = cdf + genre_of_slot
    return result


def _draw_in_genre(
    rng: np.random.Generator,
    cdf: npt.NDArray[np.float64],
    catalogue: _Catalogue,
    genres: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """A popularity-weighted item of each given genre (``cdf`` from :func:`_genre_cdf`)."""
    first = catalogue.genre_start[genres]
    slot = np.searchsorted(cdf, genres + rng.random(len(genres)), side="right")
    slot = np.clip(slot, first, first + catalogue.genre_sizes[genres] - 1)
    return catalogue.genre_items[slot].astype(np.int64)


def _timestamps(
    rng: np.random.Generator,
    config: SyntheticConfig,
    session_user: npt.NDArray[np.int64],
    session_length: npt.NDArray[np.int64],
    event_session: IndexArray,
    session_first: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Play times: sessions spread over the period without overlapping, plays a few minutes apart.

    Each user's session starts are sorted uniform points on the period less the user's total session time,
    then pushed back by the durations of the user's earlier sessions (the spacing trick), so sessions of one
    user never overlap and each user's plays in time order read session by session.
    """
    gaps = rng.integers(*_PLAY_GAP_RANGE, size=len(event_session))
    gaps[session_first] = 0
    running = np.cumsum(gaps)
    offset = running - running[session_first][event_session]  # seconds since the session's first play
    duration = offset[session_first + session_length - 1] + _SESSION_BREAK

    # Every user has at least one session and sessions are grouped by user, so user u's are one block.
    user_first = np.concatenate(([0], np.flatnonzero(np.diff(session_user)) + 1))
    busy_before = np.cumsum(duration) - duration
    busy_before -= busy_before[user_first][session_user]
    user_busy = np.add.reduceat(duration, user_first)
    free = np.maximum(config.days * SECONDS_PER_DAY - user_busy, 0.0)[session_user]
    spot = rng.random(len(session_user))
    spot = spot[np.lexsort((spot, session_user))]  # sorted within each user's block
    start = config.start_time + np.floor(spot * free).astype(np.int64) + busy_before
    result: npt.NDArray[np.int64] = start[event_session] + offset
    return result


def _interactions(
    config: SyntheticConfig,
    event_user: IndexArray,
    event_item: IndexArray,
    timestamps: npt.NDArray[np.int64],
    item_genre: IndexArray,
) -> Interactions:
    """Aggregates the plays, then re-indexes items so every item (played or not) has index ``id - 1``."""
    plays = pd.DataFrame({"user": event_user + 1, "item": event_item + 1, "time": timestamps})
    counted, _ = from_frame(plays, weight_col=None, time_col="time", source="synthetic")
    played = counted.item_ids.ids.astype(np.int64) - 1  # world index of each played item, ascending
    users = counted.user_ids.ids.astype(np.int64) - 1
    if counted.events is None:  # from_frame keeps events whenever there is a time column
        raise RuntimeError("synthetic plays lost their events")
    digits = max(4, len(str(config.n_items)))
    names = np.array(
        [f"genre{g:02d}-artist{i:0{digits}d}" for i, g in enumerate(item_genre.tolist(), start=1)],
        dtype=object,
    )
    return dataclasses.replace(
        counted,
        users=users[counted.users].astype(np.int32),
        items=played[counted.items].astype(np.int32),
        user_ids=IdMap(np.arange(1, config.n_users + 1)),
        item_ids=IdMap(np.arange(1, config.n_items + 1)),
        item_names=names,
        events=dataclasses.replace(
            counted.events,
            users=users[counted.events.users].astype(np.int32),
            items=played[counted.events.items].astype(np.int32),
        ),
    )
