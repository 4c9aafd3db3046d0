"""Listening sessions and next-item evaluation, the data side of session models such as GRU4Rec.

Plays become sessions where the listener paused for ``idle_gap`` seconds or more. The split is temporal as in
the GRU4Rec papers (Hidasi et al., ICLR 2016; the official ``examples/rsc15/preprocess.py``): sessions that
end before the split time train, the rest test, and test plays of items the training part never saw are
dropped. Evaluation follows the official ``evaluation.py``: every play of a test session after its first is a
prediction made from the plays before it; the target's rank among all items is "conservative" (ties count
against it); Recall@K is the share of targets ranked K or better and MRR@K averages 1/rank over them (0 when
ranked worse than K).

Models take part in the evaluation through :class:`NextItemScorer`: a state per session, advanced one play at
a time, which is how a recurrent model works and costs nothing for models that look only at the last item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from recsys.core.errors import ConfigError, DataError
from trainer.data.interactions import Events, Interactions

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
State = list[torch.Tensor]  # per-session state: tensors whose first dimension is the session (row) of a batch

DEFAULT_IDLE_GAP = 1_800  # 30 minutes, the usual cut between listening sessions
PAD = -1  # padding of item sequences, as in the served exclusion lists


@dataclass(frozen=True)
class Sessions:
    """Plays cut into sessions, stored session after session (a CSR layout: ``offsets`` delimit sessions)."""

    items: IntArray  # item index of every play, in time order within its session
    timestamps: IntArray  # seconds since the epoch, per play
    offsets: IntArray  # session s is items[offsets[s]:offsets[s + 1]]
    users: IntArray  # user index of every session
    n_items: int

    def __post_init__(self) -> None:
        offsets = self.offsets
        if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(self.items):
            raise DataError("session offsets must start at 0 and end at the number of plays")
        if (np.diff(offsets) < 1).any():
            raise DataError("every session must hold at least one play")
        if len(self.timestamps) != len(self.items) or len(self.users) != len(offsets) - 1:
            raise DataError("session columns have different lengths")
        if len(self.items) and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise DataError(f"session items out of range 0..{self.n_items - 1}")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> IntArray:
        return np.diff(self.offsets)

    @property
    def start_times(self) -> IntArray:
        starts: IntArray = self.timestamps[self.offsets[:-1]]
        return starts

    @property
    def end_times(self) -> IntArray:
        ends: IntArray = self.timestamps[self.offsets[1:] - 1]
        return ends

    def session(self, index: int) -> IntArray:
        return self.items[self.offsets[index] : self.offsets[index + 1]]

    def item_counts(self) -> IntArray:
        """Plays per item: the support that popularity, item-kNN and negative sampling use."""
        return np.bincount(self.items, minlength=self.n_items).astype(np.int64)

    def select(self, indices: npt.ArrayLike) -> Sessions:
        """The sessions at ``indices``, in that order."""
        chosen = np.asarray(indices, dtype=np.int64)
        rows = _gather_rows(self.offsets, chosen)
        lengths = self.lengths[chosen]
        return Sessions(
            items=self.items[rows],
            timestamps=self.timestamps[rows],
            offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            users=self.users[chosen],
            n_items=self.n_items,
        )

    def keep_plays(self, mask: BoolArray, *, min_length: int = 1) -> Sessions:
        """The plays under ``mask``, then only the sessions left with ``min_length`` plays or more."""
        session_of = np.repeat(np.arange(len(self)), self.lengths)
        lengths = np.bincount(session_of[mask], minlength=len(self))
        kept_session = lengths >= max(min_length, 1)
        plays = mask & kept_session[session_of]
        return Sessions(
            items=self.items[plays],
            timestamps=self.timestamps[plays],
            offsets=np.concatenate(([0], np.cumsum(lengths[kept_session]))).astype(np.int64),
            users=self.users[kept_session],
            n_items=self.n_items,
        )


def _gather_rows(offsets: IntArray, sessions: IntArray) -> IntArray:
    """Play positions of ``sessions``, session after session."""
    starts = offsets[sessions]
    lengths = offsets[sessions + 1] - starts
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    result: IntArray = np.repeat(starts, lengths) + within
    return result


def sessionize(
    events: Events,
    n_items: int,
    *,
    idle_gap: int = DEFAULT_IDLE_GAP,
    min_length: int = 2,
    collapse_repeats: bool = False,
) -> Sessions:
    """Cuts each user's plays into sessions at pauses of ``idle_gap`` seconds or more.

    ``collapse_repeats`` drops a play of the item just played (the same artist twice in a row in Last.fm
    logs); sessions shorter than ``min_length`` are dropped (a single play has no next item to predict).
    """
    if idle_gap < 1:
        raise ConfigError(f"idle_gap must be >= 1 second, got {idle_gap}")
    order = np.lexsort((events.timestamps, events.users))  # stable: equal times keep their order
    users = events.users[order].astype(np.int64)
    items = events.items[order].astype(np.int64)
    times = events.timestamps[order].astype(np.int64)
    if len(items) == 0:
        raise DataError("no plays to cut into sessions")
    starts = np.ones(len(items), dtype=bool)
    starts[1:] = (users[1:] != users[:-1]) | (times[1:] - times[:-1] >= idle_gap)
    keep = np.ones(len(items), dtype=bool)
    if collapse_repeats:
        keep[1:] = starts[1:] | (items[1:] != items[:-1])
    all_sessions = Sessions(
        items=items,
        timestamps=times,
        offsets=np.append(np.flatnonzero(starts), len(items)).astype(np.int64),
        users=users[starts],
        n_items=n_items,
    )
    return all_sessions.keep_plays(keep, min_length=min_length)


def sessions_of(data: Interactions, **options: Any) -> Sessions:
    """:func:`sessionize` on the plays of ``data``, which must carry timestamped events."""
    if data.events is None:
        raise DataError("session models need timestamped plays (events); this data set has none")
    return sessionize(data.events, data.n_items, **options)


@dataclass(frozen=True)
class SessionSplit:
    train: Sessions
    test: Sessions
    split_time: int  # every training play is earlier; every test session ends at or after it


def temporal_split(
    sessions: Sessions,
    *,
    test_fraction: float = 0.1,
    split_time: int | None = None,
    min_length: int = 2,
) -> SessionSplit:
    """Sessions that end before ``split_time`` train; the others test (the official preprocessing's rule).

    Without ``split_time`` it is the end time of the session at the ``1 - test_fraction`` quantile, so about
    that share of sessions (ties at the split time included) is held out. Test plays of items absent from
    training are dropped, then test sessions shorter than ``min_length``.
    """
    if len(sessions) < 2:
        raise DataError("need at least two sessions to split")
    ends = sessions.end_times
    if split_time is None:
        if not 0.0 < test_fraction < 1.0 or math.isnan(test_fraction):
            raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
        n_test = max(1, math.ceil(len(sessions) * test_fraction))
        split_time = int(np.sort(ends)[len(sessions) - n_test])
    is_train = ends < split_time
    train = sessions.select(np.flatnonzero(is_train))
    test = sessions.select(np.flatnonzero(~is_train))
    known = train.item_counts() > 0
    test = test.keep_plays(known[test.items], min_length=min_length)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"split at {split_time} leaves {len(train)} training and {len(test)} test sessions")
    return SessionSplit(train=train, test=test, split_time=int(split_time))


def pad_sequences(sequences: list[IntArray] | list[list[int]], max_len: int) -> IntArray:
    """The last ``max_len`` items of each sequence, oldest first, right-padded with ``PAD`` (-1).

    This is the layout of the served scorer's ``ITEM_SEQUENCE`` input.
    """
    if max_len < 1:
        raise ConfigError(f"max_len must be >= 1, got {max_len}")
    out = np.full((len(sequences), max_len), PAD, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        tail = np.asarray(sequence, dtype=np.int64)[-max_len:]
        out[row, : len(tail)] = tail
    return out


def recent_sequences(
    events: Events, n_users: int, n_items: int, *, max_len: int, idle_gap: int = DEFAULT_IDLE_GAP
) -> IntArray:
    """Each user's latest session (its last ``max_len`` plays) as a padded ``[n_users, max_len]`` matrix.

    What the serving lookup hands the session scorer; users without plays get an all-padding row.
    """
    out = np.full((n_users, max_len), PAD, dtype=np.int64)
    if len(events) == 0:
        return out
    sessions = sessionize(events, n_items, idle_gap=idle_gap, min_length=1)
    # sessionize orders sessions by user, then time: a user's latest session is the last of their run.
    is_last = np.append(sessions.users[1:] != sessions.users[:-1], True)
    latest = np.flatnonzero(is_last)
    out[sessions.users[latest]] = pad_sequences([sessions.session(int(s)) for s in latest], max_len)
    return out


class NextItemScorer(Protocol):
    """What the evaluation loop needs from a model: a state per session, advanced one play at a time."""

    @property
    def n_items(self) -> int: ...

    def initial_state(self, batch_size: int) -> State:
        """The state of ``batch_size`` sessions before their first play."""
        ...

    def step(self, state: State, items: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Scores of every item as the next play after ``items`` (``[B, n_items]``), and the new state."""
        ...


class SessionPopularity:
    """The popularity baseline of the GRU4Rec papers: every session gets the most played items."""

    def __init__(self) -> None:
        self.counts = torch.empty(0)

    @property
    def n_items(self) -> int:
        return len(self.counts)

    def fit(self, train: Sessions) -> SessionPopularity:
        self.counts = torch.from_numpy(train.item_counts().astype(np.float32))
        return self

    def initial_state(self, batch_size: int) -> State:
        return []

    def step(self, state: State, items: torch.Tensor) -> tuple[torch.Tensor, State]:
        return self.counts.expand(len(items), -1), state


def evaluate_next_item(
    scorer: NextItemScorer,
    test: Sessions,
    *,
    ks: tuple[int, ...] = (20,),
    batch_size: int = 256,
    exclude_seen: bool = False,
    mode: str = "conservative",
) -> dict[str, float]:
    """Recall@K and MRR@K of predicting every play of the test sessions from the plays before it.

    ``exclude_seen`` removes the session's plays so far from the ranking (what the served top-k does), so a
    target the listener already heard in the session is then a miss. ``mode`` is the official tie rule:
    ``conservative`` (rank = items scoring at least the target) or ``standard`` (1 + items scoring more).
    """
    if mode not in ("conservative", "standard"):
        raise ConfigError(f"mode must be 'conservative' or 'standard', got {mode!r}")
    if not ks or min(ks) < 1:
        raise ConfigError(f"cut-offs must be >= 1, got {ks}")
    if test.n_items > scorer.n_items:
        raise ConfigError(f"test sessions use {test.n_items} items, the model knows {scorer.n_items}")
    lengths = test.lengths
    order = np.argsort(-lengths, kind="stable")  # longest first: the active rows of a batch are a prefix
    hits = dict.fromkeys(ks, 0.0)
    reciprocal = dict.fromkeys(ks, 0.0)
    n_predictions = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            batch_lengths = lengths[batch]
            padded = torch.from_numpy(_padded(test, batch, int(batch_lengths[0])))
            state = scorer.initial_state(len(batch))
            seen: torch.Tensor | None = None
            for t in range(int(batch_lengths[0]) - 1):
                active = int((batch_lengths > t + 1).sum())
                state = [part[:active] for part in state]
                inputs = padded[:active, t]
                scores, state = scorer.step(state, inputs)
                scores = scores.float()
                inputs, targets = inputs.to(scores.device), padded[:active, t + 1].to(scores.device)
                if exclude_seen:
                    if seen is None:
                        seen = torch.zeros(active, scorer.n_items, dtype=torch.bool, device=scores.device)
                    seen = seen[:active]
                    seen[torch.arange(active, device=scores.device), inputs] = True
                    scores = scores.masked_fill(seen, -math.inf)
                ranks = _ranks(scores, targets, mode)
                for k in ks:
                    within = ranks <= k
                    hits[k] += float(within.sum())
                    reciprocal[k] += float((within / ranks).sum())
                n_predictions += active
    if n_predictions == 0:
        raise DataError("test sessions hold no prediction (every session needs two plays or more)")
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = hits[k] / n_predictions
        out[f"mrr@{k}"] = reciprocal[k] / n_predictions
    out["n_predictions"] = float(n_predictions)
    return out


def _padded(sessions: Sessions, batch: IntArray, width: int) -> IntArray:
    out = np.zeros((len(batch), width), dtype=np.int64)
    for row, s in enumerate(batch.tolist()):
        items = sessions.session(s)
        out[row, : len(items)] = items
    return out


def _ranks(scores: torch.Tensor, targets: torch.Tensor, mode: str) -> torch.Tensor:
    """Rank of each target among all items; a target that cannot be shown (-inf, NaN) ranks last."""
    target = scores.gather(1, targets[:, None])
    ranks = (scores >= target).sum(dim=1) if mode == "conservative" else (scores > target).sum(dim=1) + 1
    return torch.where(torch.isfinite(target[:, 0]), ranks, scores.shape[1] + 1).double()
