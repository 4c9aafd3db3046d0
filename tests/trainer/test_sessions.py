"""Sessions, the temporal split, the next-item metrics and the two session baselines, against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.core.errors import ConfigError, DataError
from trainer.data.interactions import Events
from trainer.data.lastfm1k import load_lastfm1k
from trainer.models.item_knn_sessions import SessionItemKNN, SessionItemKNNParams
from trainer.sessions import (
    PAD,
    SessionPopularity,
    Sessions,
    State,
    evaluate_next_item,
    pad_sequences,
    recent_sequences,
    sessionize,
    sessions_of,
    temporal_split,
)


def make_sessions(rows: list[list[int]], n_items: int, *, starts: list[int] | None = None) -> Sessions:
    """Sessions from item lists; session s starts at ``starts[s]`` (default 1000 * s), plays 60 s apart."""
    starts = starts or [1000 * s for s in range(len(rows))]
    lengths = [len(r) for r in rows]
    return Sessions(
        items=np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]),
        timestamps=np.concatenate([start + 60 * np.arange(len(r)) for start, r in zip(starts, rows, strict=True)]),
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        users=np.arange(len(rows), dtype=np.int64),
        n_items=n_items,
    )


def events(users: list[int], items: list[int], times: list[int]) -> Events:
    return Events(np.array(users, dtype=np.int32), np.array(items, dtype=np.int32), np.array(times, dtype=np.int64))


# ------------------------------------------------------------------------------------------------ sessionize


def test_a_pause_of_idle_gap_or_more_starts_a_session() -> None:
    # user 0: pauses of 100 s, then exactly 1800 s (cut), then 1799 s (no cut); user 1 is listed first on purpose
    plays = events(
        [1, 1, 0, 0, 0, 0, 0],
        [5, 6, 1, 2, 3, 4, 0],
        [50, 10, 0, 100, 1900, 3699, 3800],
    )
    sessions = sessionize(plays, 7, idle_gap=1800, min_length=1)
    assert [sessions.session(s).tolist() for s in range(len(sessions))] == [[1, 2], [3, 4, 0], [6, 5]]
    assert sessions.users.tolist() == [0, 0, 1]
    assert sessions.start_times.tolist() == [0, 1900, 10]
    assert sessions.end_times.tolist() == [100, 3800, 50]


def test_short_sessions_are_dropped_and_repeats_collapsed() -> None:
    plays = events([0, 0, 0, 0, 0, 0], [1, 1, 2, 2, 3, 3], [0, 10, 20, 5000, 5010, 10_000])
    assert [len(sessionize(plays, 4, min_length=m)) for m in (1, 2, 3)] == [3, 2, 1]
    collapsed = sessionize(plays, 4, collapse_repeats=True, min_length=1)
    # The first session's repeat goes; the second session's 2 stays (a new session is not a repeat).
    assert [collapsed.session(s).tolist() for s in range(len(collapsed))] == [[1, 2], [2, 3], [3]]
    with pytest.raises(ConfigError, match="idle_gap"):
        sessionize(plays, 4, idle_gap=0)


def test_lastfm1k_logs_become_sessions(tmp_path: Path) -> None:
    lines = [
        "user_000001\t2009-05-04T13:00:00Z\t\tArtist A\t\tt1",
        "user_000001\t2009-05-04T13:04:00Z\t\tArtist B\t\tt2",
        "user_000001\t2009-05-04T13:08:00Z\t\tArtist B\t\tt3",
        "user_000001\t2009-05-04T18:00:00Z\t\tArtist C\t\tt4",  # hours later: a new session
        "user_000001\t2009-05-04T18:03:00Z\t\tArtist A\t\tt5",
        "user_000002\t2009-05-05T10:00:00Z\t\tArtist C\t\tt6",
    ]
    path = tmp_path / "log.tsv"
    path.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")  # newest first, like the real file
    data = load_lastfm1k(path)
    names = {str(data.item_ids.ids[i]): i for i in range(data.n_items)}
    sessions = sessions_of(data, collapse_repeats=True)
    as_names = [[data.item_ids.ids[i] for i in sessions.session(s)] for s in range(len(sessions))]
    assert as_names == [["Artist A", "Artist B"], ["Artist C", "Artist A"]]
    assert sessions.n_items == len(names) == 3


def test_data_without_events_is_refused(small_world) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    with pytest.raises(DataError, match="timestamped"):
        sessions_of(dataclasses.replace(small_world.interactions, events=None))


# ------------------------------------------------------------------------------------------------ split


def test_temporal_split_has_no_future_leakage(small_world) -> None:  # type: ignore[no-untyped-def]
    sessions = sessions_of(small_world.interactions)
    split = temporal_split(sessions, test_fraction=0.2)
    assert split.train.timestamps.max() < split.split_time
    assert (split.test.end_times >= split.split_time).all()
    assert len(split.test) == pytest.approx(0.2 * len(sessions), rel=0.1)  # a few drop below two known plays
    trained = set(split.train.items.tolist())
    assert set(split.test.items.tolist()) <= trained
    assert split.test.lengths.min() >= 2
    # Every training play is an original play; nothing is invented or duplicated.
    assert split.train.n_events + split.test.n_events <= sessions.n_events


def test_split_drops_unknown_items_then_short_sessions() -> None:
    rows = [[0, 1, 2], [1, 2], [3, 1], [3, 1, 2], [0, 1]]
    sessions = make_sessions(rows, 5, starts=[0, 10_000, 30_000, 40_000, 50_000])
    split = temporal_split(sessions, split_time=25_000)  # item 3 is only played after the split
    assert [split.test.session(s).tolist() for s in range(len(split.test))] == [[1, 2], [0, 1]]
    with pytest.raises(DataError, match="leaves 0 training"):
        temporal_split(sessions, split_time=-1)
    with pytest.raises(ConfigError, match="test_fraction"):
        temporal_split(sessions, test_fraction=1.0)


# ------------------------------------------------------------------------------------------------ sequences


def test_pad_sequences_keeps_the_latest_plays() -> None:
    padded = pad_sequences([[1, 2, 3, 4], [5], []], 3)
    assert padded.tolist() == [[2, 3, 4], [5, PAD, PAD], [PAD, PAD, PAD]]


def test_recent_sequences_are_each_users_latest_session() -> None:
    plays = events([0, 0, 0, 0, 2], [1, 2, 3, 4, 0], [0, 60, 9000, 9060, 5])
    recent = recent_sequences(plays, 3, 5, max_len=4, idle_gap=1800)
    assert recent.tolist() == [[3, 4, PAD, PAD], [PAD] * 4, [0, PAD, PAD, PAD]]


# ------------------------------------------------------------------------------------------------ metrics


class Successor:
    """Scores item (x + 1) % n highest, then (x + 2) % n, ... (a fixed, known ranking)."""

    def __init__(self, n: int) -> None:
        self.n = n

    @property
    def n_items(self) -> int:
        return self.n

    def initial_state(self, batch_size: int) -> State:
        return []

    def step(self, state: State, items: torch.Tensor) -> tuple[torch.Tensor, State]:
        distance = (torch.arange(self.n)[None, :] - items[:, None]) % self.n  # 1 = successor, 0 = the item itself
        return -distance.float().masked_fill(distance == 0, self.n), state


def test_recall_and_mrr_by_hand() -> None:
    # Targets are 1, 2, 3 and 4 places after their input: ranks 1, 2, 3, 4 (ties impossible).
    test = make_sessions([[0, 1, 3], [5, 8, 2]], 10)
    metrics = evaluate_next_item(Successor(10), test, ks=(1, 3, 20), batch_size=1)
    assert metrics["n_predictions"] == 4
    assert metrics["recall@1"] == pytest.approx(1 / 4)
    assert metrics["recall@3"] == pytest.approx(3 / 4)
    assert metrics["mrr@3"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert metrics["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    batched = evaluate_next_item(Successor(10), test, ks=(1, 3, 20), batch_size=7)
    assert batched == metrics


def test_conservative_ties_count_against_the_target() -> None:
    test = make_sessions([[0, 1, 2]], 30)
    assert evaluate_next_item(SessionPopularity().fit(make_sessions([list(range(30))], 30)), test)["recall@20"] == 0
    flat = SessionPopularity().fit(make_sessions([list(range(30))], 30))
    assert evaluate_next_item(flat, test, mode="standard")["mrr@20"] == 1.0
    with pytest.raises(ConfigError, match="mode"):
        evaluate_next_item(flat, test, mode="optimistic")


def test_excluding_the_session_makes_repeats_misses() -> None:
    test = make_sessions([[0, 1, 0]], 10)  # 0 -> 1 (rank 1), then 1 -> 0 (rank 9 by Successor; heard)
    kept = evaluate_next_item(Successor(10), test, ks=(10,))
    excluded = evaluate_next_item(Successor(10), test, ks=(10,), exclude_seen=True)
    assert kept["recall@10"] == 1.0
    assert excluded["recall@10"] == 0.5


def test_popularity_ranks_by_plays() -> None:
    train = make_sessions([[0, 1, 1, 1], [2, 1, 2]], 4)  # plays: item 1 x4, item 2 x2, item 0 x1
    test = make_sessions([[0, 2, 0, 1]], 4)
    metrics = evaluate_next_item(SessionPopularity().fit(train), test, ks=(1, 2))
    assert metrics["recall@1"] == pytest.approx(1 / 3)  # only the target 1 is ranked first
    assert metrics["mrr@2"] == pytest.approx((1 / 2 + 1) / 3)  # 2 -> rank 2, 0 -> rank 3, 1 -> rank 1


# ------------------------------------------------------------------------------------------------ item-kNN


def test_item_knn_equals_the_hand_computation() -> None:
    # Sessions: {0,1,2}, {0,1}, {1,2,2}: item 2 is played twice in the last one.
    train = make_sessions([[0, 1, 2], [0, 1], [1, 2, 2]], 4)
    knn = SessionItemKNN(SessionItemKNNParams(lmbd=1.0, alpha=0.5)).fit(train)
    sims = knn.similarities.toarray()
    supp = {0: 2, 1: 3, 2: 3, 3: 0}

    def expected(i: int, j: int, co: float) -> float:
        return co / (math.sqrt(supp[i] + 1.0) * math.sqrt(supp[j] + 1.0))

    assert sims[0, 1] == pytest.approx(expected(0, 1, 2))  # two sessions hold both
    assert sims[1, 2] == pytest.approx(expected(1, 2, 2))
    # Each of item 2's three plays counts item 1 once (the official loop): 3, not 2.
    assert sims[2, 1] == pytest.approx(expected(2, 1, 3))
    assert sims[0, 2] == pytest.approx(expected(0, 2, 1))
    assert np.diag(sims).tolist() == [0.0] * 4
    assert (sims[3] == 0).all()
    assert (sims[:, 3] == 0).all()
    # Prediction reads the last item only.
    scores, _ = knn.step([], torch.tensor([0]))
    assert scores[0].tolist() == pytest.approx(sims[0].tolist())


def test_item_knn_keeps_n_sims_neighbours() -> None:
    train = make_sessions([[0, 1, 2, 3, 4], [0, 1, 2], [0, 1]], 5)
    knn = SessionItemKNN(SessionItemKNNParams(n_sims=2, lmbd=0.0)).fit(train)
    assert np.diff(knn.similarities.indptr).max() == 2
    assert sorted(knn.similarities[0].indices.tolist()) == [1, 2]  # co 3 and 2 beat items 3 and 4 (co 1)


def test_item_knn_beats_popularity_on_sequential_listening(small_world) -> None:  # type: ignore[no-untyped-def]
    split = temporal_split(sessions_of(small_world.interactions), test_fraction=0.2)
    knn = evaluate_next_item(SessionItemKNN().fit(split.train), split.test)
    pop = evaluate_next_item(SessionPopularity().fit(split.train), split.test)
    assert knn["recall@20"] > 2 * pop["recall@20"]
