"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018) in PyTorch, after the official code.

Third-party GRU4Rec versions were found to lose up to 99% of the accuracy (Hidasi & Czapp, RecSys 2023,
arXiv 2307.14956), mostly by leaving out the parts below. Each follows ``gru4rec_pytorch.py`` of
hidasib/GRU4Rec_PyTorch_Official, and the defaults of :class:`GRU4RecParams` are that class's defaults:

* **session-parallel mini-batches**: ``batch_size`` sessions side by side, one play each per step; when a
  session runs out, the next session (in order of start time) takes its slot and that slot's hidden state is
  reset to zero; when none is left, the slot is dropped (:func:`session_parallel_batches`);
* **one step of backpropagation**: the hidden state is detached after every step, as in the official code;
* **output sampling**: the scores are computed only for the mini-batch's targets (in-batch negatives) plus
  ``n_sample`` extra items shared by the whole mini-batch, drawn with probability ``supp ** sample_alpha``
  (:class:`NegativeSampler`);
* **losses**: ``cross-entropy`` over those columns (with optional logQ correction), or ``bpr-max`` (ELU on the
  scores, a softmax over the negatives weighting both the BPR term and the ``bpreg`` score regulariser);
  both are summed over the mini-batch and divided by ``batch_size`` (:func:`cross_entropy_loss`,
  :func:`bpr_max_loss`);
* **constrained embedding**: the input embedding of an item is its output vector (``Wy``), so the first GRU
  layer reads vectors of the last layer's width;
* **Adagrad with momentum, row-wise on the sparse embeddings** (:class:`IndexedAdagrad`);
* **initialisation**: uniform in ``+-sqrt(6 / (fan_in + fan_out))`` per gate block, biases at zero (the
  official ``fit``'s default "compatibility mode").

The recommender side (:class:`GRU4Rec`) scores a listener from their latest training session, and scores
any batch of item sequences (:meth:`GRU4Rec.score_sequences`), which is what the exported scorer does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from recsys.core.errors import ArtifactError, ConfigError, DataError, RecsysError
from trainer.data.interactions import Interactions
from trainer.models.base import SEED, Bound, Params, Recommender
from trainer.progress import Advance, progress_bar
from trainer.sessions import (
    DEFAULT_IDLE_GAP,
    BoolArray,
    IntArray,
    Sessions,
    State,
    recent_sequences,
    sessions_of,
)

LOSSES = ("cross-entropy", "bpr-max")


class TrainingDivergedError(RecsysError):
    """The loss became NaN; the model is unusable (lower the learning rate)."""


# ------------------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class GRU4RecParams(Params):
    """The official ``GRU4Rec.__init__`` defaults, then the few settings this project adds (marked *ours*)."""

    loss: str = "cross-entropy"
    layers: tuple[int, ...] = (100,)
    batch_size: int = 64
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    sample_alpha: float = 0.5
    n_sample: int = 2048
    embedding: int = 0  # 0 with constrained_embedding: the output vectors are the input embedding
    constrained_embedding: bool = True
    n_epochs: int = 10
    bpreg: float = 1.0
    elu_param: float = 0.5
    logq: float = 0.0
    # ours: how plays become sessions, how many recent plays a listener is scored from, the random seed
    session_gap: int = DEFAULT_IDLE_GAP
    max_sequence_length: int = 50
    seed: int = 0

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "batch_size": Bound(1, 2**16),
        "dropout_p_embed": Bound(0, 1, high_open=True),
        "dropout_p_hidden": Bound(0, 1, high_open=True),
        "learning_rate": Bound(0, 10, low_open=True),
        "momentum": Bound(0, 1, high_open=True),
        "sample_alpha": Bound(0, 1),
        "n_sample": Bound(0, 2**20),
        "embedding": Bound(0, 4096),
        "n_epochs": Bound(1, 1000),
        "bpreg": Bound(0, 100),
        "elu_param": Bound(0, 100),
        "logq": Bound(0, 10),
        "session_gap": Bound(1, 10**9),
        "max_sequence_length": Bound(1, 10_000),
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(size) for size in self.layers))  # JSON gives a list
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ConfigError(f"GRU4Rec loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not self.layers or min(self.layers) < 1 or max(self.layers) > 4096:
            raise ConfigError("GRU4Rec layers must be a non-empty list of sizes in [1, 4096]")
        if not self.constrained_embedding and self.embedding == 0:
            raise ConfigError(
                "GRU4Rec without constrained_embedding needs embedding > 0 (the official one-hot GRU input "
                "layer is not implemented)"
            )


# ------------------------------------------------------------------------------------------------ mini-batches


@dataclass(frozen=True)
class ParallelStep:
    """One step of session-parallel training: slot ``r`` feeds ``inputs[r]`` and must predict ``targets[r]``.

    Before the step, the state of the previous step is first cut to the slots in ``keep`` (``None``: all
    slots go on), then the slots under ``reset`` (a new session took them) start from a zero state.
    """

    inputs: IntArray
    targets: IntArray
    keep: IntArray | None
    reset: BoolArray
    sessions: IntArray  # the session each slot is playing, for tests and debugging


def session_parallel_batches(sessions: Sessions, batch_size: int) -> Iterator[ParallelStep]:
    """The (input, target) pairs of every session, ``batch_size`` sessions at a time (Hidasi et al. 2016, Fig. 2).

    Sessions enter in order of their first play (the official ``session_order='time'``); a finished slot
    takes the next session, slots taking one in slot order; sessions with a single play give no pair and are
    skipped. Every consecutive pair of every session is yielded exactly once, in order within its session.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    offsets = sessions.offsets
    queue = np.argsort(sessions.start_times, kind="stable")
    queue = queue[sessions.lengths[queue] >= 2]
    n_slots = min(batch_size, len(queue))
    if n_slots == 0:
        return
    slot_session = queue[:n_slots].copy()
    next_in_queue = n_slots
    cursor = offsets[slot_session].copy()  # the play each slot feeds in
    end = offsets[slot_session + 1].copy()
    reset = np.ones(n_slots, dtype=bool)
    keep: IntArray | None = None
    items = sessions.items
    while True:
        yield ParallelStep(items[cursor], items[cursor + 1], keep, reset, slot_session.copy())
        cursor = cursor + 1
        finished = np.flatnonzero(cursor + 1 >= end)
        reset = np.zeros(len(cursor), dtype=bool)
        keep = None
        if len(finished) == 0:
            continue
        n_new = min(len(finished), len(queue) - next_in_queue)
        refill = finished[:n_new]
        new_sessions = queue[next_in_queue : next_in_queue + n_new]
        next_in_queue += n_new
        slot_session[refill] = new_sessions
        cursor[refill] = offsets[new_sessions]
        end[refill] = offsets[new_sessions + 1]
        reset[refill] = True
        if n_new < len(finished):  # the queue ran dry: drop the finished slots that got nothing
            alive = np.ones(len(cursor), dtype=bool)
            alive[finished[n_new:]] = False
            keep = np.flatnonzero(alive)
            slot_session, cursor, end, reset = slot_session[keep], cursor[keep], end[keep], reset[keep]
            if len(keep) == 0:
                return


def carry_state(state: State, step: ParallelStep) -> State:
    """The state a step starts from: the previous one cut to ``step.keep``, zero in the ``step.reset`` slots."""
    if not state:
        return state
    device = state[0].device
    if step.keep is not None:
        keep = torch.from_numpy(step.keep).to(device)
        state = [h[keep] for h in state]
    if step.reset.any():
        reset = torch.from_numpy(step.reset).to(device)[:, None]
        state = [h.masked_fill(reset, 0.0) for h in state]
    return state


# ------------------------------------------------------------------------------------------------ sampling


def sampling_cdf(counts: npt.ArrayLike, alpha: float) -> torch.Tensor:
    """Cumulative distribution of ``counts ** alpha`` (float64; items never played are never drawn)."""
    weights = np.asarray(counts, dtype=np.float64) ** alpha
    weights[np.asarray(counts) <= 0] = 0.0
    total = weights.sum()
    if total <= 0:
        raise DataError("no item has been played: nothing to sample negatives from")
    cdf = np.cumsum(weights) / total
    cdf[-1] = 1.0
    return torch.from_numpy(cdf)


class NegativeSampler:
    """Draws ``n_sample`` items per mini-batch from ``supp ** alpha``, many mini-batches at a time.

    The draws are an inverse-CDF search (the official ``SampleCache``'s binary search), made in blocks of about
    ``cache_size`` items to keep the per-step cost to a slice.
    """

    def __init__(
        self,
        counts: npt.ArrayLike,
        alpha: float,
        n_sample: int,
        generator: torch.Generator,
        device: torch.device,
        cache_size: int = 10_000_000,
    ) -> None:
        self.cdf = sampling_cdf(counts, alpha).to(device)
        self.n_sample = n_sample
        self.generator = generator
        self.device = device
        self.batches_per_refill = max(1, min(cache_size // max(n_sample, 1), 1000))
        self._cache = torch.empty(0, n_sample, dtype=torch.int64, device=device)
        self._next = 0

    def draw(self, n: int) -> torch.Tensor:
        """``n`` independent draws (item indices)."""
        uniform = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        return torch.searchsorted(self.cdf, uniform, right=True).clamp_max(len(self.cdf) - 1)

    def next_batch(self) -> torch.Tensor:
        if self._next >= len(self._cache):
            self._cache = self.draw(self.batches_per_refill * self.n_sample).view(-1, self.n_sample)
            self._next = 0
        sample = self._cache[self._next]
        self._next += 1
        return sample


# ------------------------------------------------------------------------------------------------ losses


def cross_entropy_loss(scores: torch.Tensor) -> torch.Tensor:
    """Summed categorical cross-entropy; row ``r``'s target is column ``r`` (the official ``xe_loss_with_softmax``).

    ``scores`` is ``[M, M + n_sample]``: the mini-batch's own targets first, then the shared samples.
    """
    probabilities = torch.softmax(scores, dim=1)
    return -torch.sum(torch.log(torch.diagonal(probabilities) + 1e-24))


def bpr_max_loss(scores: torch.Tensor, bpreg: float, elu_param: float) -> torch.Tensor:
    """Summed BPR-max (Hidasi & Karatzoglou 2018, eq. 11, plus the score regulariser of section 4.2.1).

    Per row with target score ``r_i`` and negatives ``j`` weighted by ``s_j = softmax(r_j)`` over the negatives:
    ``-log(sum_j s_j * sigmoid(r_i - r_j)) + bpreg * sum_j s_j * r_j ** 2``; the scores first go through
    ``elu(., elu_param)`` when ``elu_param > 0``, as the official ``bpr_max_loss_with_elu`` does.
    """
    if elu_param > 0:
        scores = functional.elu(scores, elu_param)
    rows, cols = scores.shape
    off_target = 1.0 - torch.eye(rows, cols, dtype=scores.dtype, device=scores.device)
    masked = scores * off_target
    weights = torch.exp(masked - masked.max(dim=1, keepdim=True).values) * off_target
    weights = weights / weights.sum(dim=1, keepdim=True)
    target = torch.diagonal(scores)[:, None]
    ranking = -torch.log(torch.sum(torch.sigmoid(target - scores) * weights, dim=1) + 1e-24)
    return torch.sum(ranking + bpreg * torch.sum(scores**2 * weights, dim=1))


# ------------------------------------------------------------------------------------------------ optimiser


class IndexedAdagrad:
    """Adagrad with momentum as the official ``IndexedAdagradM`` (``eps`` inside the square root).

    ``acc += g**2``; ``v = momentum * v - lr * g / sqrt(acc + eps)``; ``w += v``. For a sparse gradient (an
    embedding) only the rows it touches are updated, their momentum included.
    """

    def __init__(
        self, params: Iterable[nn.Parameter], learning_rate: float, momentum: float = 0.0, eps: float = 1e-6
    ) -> None:
        self.params = list(params)
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.eps = eps
        self.acc = [torch.zeros_like(p) for p in self.params]
        self.mom = [torch.zeros_like(p) for p in self.params] if momentum > 0 else []

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for index, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            acc = self.acc[index]
            if grad.is_sparse:
                grad = grad.coalesce()  # the update is not linear: each row must appear once
                rows, values = grad.indices()[0], grad.values()
                row_acc = acc[rows] + values.pow(2)
                acc.index_copy_(0, rows, row_acc)
                update = -self.learning_rate * values / (row_acc + self.eps).sqrt()
                if self.momentum > 0:
                    update = self.mom[index][rows] * self.momentum + update
                    self.mom[index].index_copy_(0, rows, update)
                p.index_add_(0, rows, update)
            else:
                acc.add_(grad.pow(2))
                update = -self.learning_rate * grad / (acc + self.eps).sqrt()
                if self.momentum > 0:
                    update = self.mom[index].mul_(self.momentum).add_(update)
                p.add_(update)


# ------------------------------------------------------------------------------------------------ network


def _uniform(shape: tuple[int, ...], fan_sum: int, generator: torch.Generator) -> torch.Tensor:
    sigma = math.sqrt(6.0 / fan_sum)
    return torch.rand(shape, generator=generator) * 2 * sigma - sigma


class GRU4RecNet(nn.Module):
    """Embedding -> stacked GRU cells -> scores against output vectors ``Wy`` plus bias ``By``."""

    def __init__(self, n_items: int, params: GRU4RecParams) -> None:
        super().__init__()
        self.n_items = n_items
        self.layers = params.layers
        self.constrained = params.constrained_embedding
        width = params.layers[-1] if params.constrained_embedding else params.embedding
        self.Wy = nn.Embedding(n_items, params.layers[-1], sparse=True)
        self.By = nn.Embedding(n_items, 1, sparse=True)
        self.E = None if self.constrained else nn.Embedding(n_items, params.embedding, sparse=True)
        sizes = (width, *params.layers)
        self.G = nn.ModuleList(nn.GRUCell(sizes[i], sizes[i + 1]) for i in range(len(params.layers)))
        self.drop_embed = nn.Dropout(params.dropout_p_embed)
        self.drop_hidden = nn.Dropout(params.dropout_p_hidden)

    def reset_parameters(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            for cell in self.G:
                assert isinstance(cell, nn.GRUCell)
                size, n_in = cell.hidden_size, cell.input_size
                cell.weight_ih.copy_(torch.cat([_uniform((size, n_in), n_in + size, generator) for _ in range(3)]))
                cell.weight_hh.copy_(torch.cat([_uniform((size, size), 2 * size, generator) for _ in range(3)]))
                cell.bias_ih.zero_()
                cell.bias_hh.zero_()
            self.Wy.weight.copy_(_uniform(tuple(self.Wy.weight.shape), sum(self.Wy.weight.shape), generator))
            self.By.weight.zero_()
            if self.E is not None:
                self.E.weight.copy_(_uniform(tuple(self.E.weight.shape), sum(self.E.weight.shape), generator))

    def initial_state(self, batch_size: int, device: torch.device) -> State:
        return [torch.zeros(batch_size, size, device=device) for size in self.layers]

    def advance(self, embedded: torch.Tensor, state: State) -> State:
        """The hidden states after one play (dropout between layers while training, as the official code)."""
        x = self.drop_embed(embedded)
        new_state = []
        for cell, h in zip(self.G, state, strict=True):
            x = self.drop_hidden(cell(x, h))
            new_state.append(x)
        return new_state

    def forward(self, inputs: torch.Tensor, state: State, targets: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Scores ``[len(inputs), len(targets)]`` of the sampled output columns, and the new state."""
        if self.E is None:  # one look-up for inputs and outputs, so Wy gets one sparse gradient
            both = self.Wy(torch.cat([inputs, targets]))
            embedded, out_vectors = both[: len(inputs)], both[len(inputs) :]
        else:
            embedded, out_vectors = self.E(inputs), self.Wy(targets)
        state = self.advance(embedded, state)
        return state[-1] @ out_vectors.T + self.By(targets).T, state

    def embed(self, items: torch.Tensor) -> torch.Tensor:
        table = self.Wy if self.E is None else self.E
        embedded: torch.Tensor = table(items)
        return embedded

    def score_all(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.By.weight[:, 0], hidden, self.Wy.weight.T)


# ------------------------------------------------------------------------------------------------ recommender


@dataclass
class TrainingLog:
    epoch_loss: list[float] = field(default_factory=list)  # mean loss per mini-batch, per epoch
    epoch_seconds: list[float] = field(default_factory=list)
    steps: int = 0


class GRU4Rec(Recommender):
    """GRU4Rec behind the project's :class:`Recommender` contract and the next-item scorer protocol.

    * ``fit(interactions)`` cuts ``interactions.events`` into sessions (``session_gap``) and trains on them;
      ``fit_sessions(sessions)`` trains on sessions made elsewhere (a temporal split's training part);
    * ``score(users)`` scores each user from their latest training session (its last ``max_sequence_length``
      plays); :meth:`score_sequences` scores any padded batch of sequences (what the exported scorer does);
    * ``initial_state``/``step`` make it a :class:`~trainer.sessions.NextItemScorer` for
      :func:`~trainer.sessions.evaluate_next_item`.

    Items that never occur in training score ``-inf`` (the official model does not know them at all); an
    empty sequence gets the popularity fallback scores (``fallback_scores``).
    """

    name = "gru4rec"
    params_type = GRU4RecParams
    params: GRU4RecParams

    def __init__(self, params: Params | None = None, *, device: str | torch.device = "cpu") -> None:
        super().__init__(params, device=device)
        self.net: GRU4RecNet | None = None
        self.item_counts = np.zeros(0, dtype=np.int64)
        self.user_sequences = np.zeros((0, self.params.max_sequence_length), dtype=np.int64)
        self.log = TrainingLog()
        self._derive()

    # -------------------------------------------------------------------------------- training

    def fit(self, train: Interactions, *, show_progress: bool = False) -> Self:
        sessions = sessions_of(train, idle_gap=self.params.session_gap, min_length=2)
        assert train.events is not None  # sessions_of refuses data without events
        recent = recent_sequences(
            train.events,
            train.n_users,
            train.n_items,
            max_len=self.params.max_sequence_length,
            idle_gap=self.params.session_gap,
        )
        return self.fit_sessions(sessions, user_sequences=recent, show_progress=show_progress)

    def fit_sessions(
        self, train: Sessions, *, user_sequences: IntArray | None = None, show_progress: bool = False
    ) -> Self:
        """Trains on ``train``; ``user_sequences`` (``[n_users, L]``, -1 padded) is what :meth:`score` reads."""
        p = self.params
        dev = self.device
        counts = train.item_counts()
        if int((train.lengths >= 2).sum()) == 0:
            raise DataError("GRU4Rec needs sessions with two plays or more")
        generator = torch.Generator(device=dev).manual_seed(p.seed)
        init_generator = torch.Generator().manual_seed(p.seed)
        net = GRU4RecNet(train.n_items, p)
        net.reset_parameters(init_generator)
        net = net.to(dev).train()
        sampler = NegativeSampler(counts, p.sample_alpha, p.n_sample, generator, dev) if p.n_sample > 0 else None
        support = torch.from_numpy(counts.astype(np.float32)).to(dev)
        optimizer = IndexedAdagrad(net.parameters(), p.learning_rate, p.momentum)
        self.log = TrainingLog()
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(p.seed)  # dropout masks
            # The bar counts predicted plays, so it moves within an epoch too (one epoch can take minutes).
            per_epoch = int(np.maximum(train.lengths - 1, 0).sum())
            with progress_bar("GRU4Rec", p.n_epochs * per_epoch, enabled=show_progress) as advance:
                for epoch in range(p.n_epochs):
                    self._train_epoch(net, train, sampler, support, optimizer, epoch, advance)
        self.net = net.eval()
        self.item_counts = counts
        self.n_items = train.n_items
        if user_sequences is None:
            user_sequences = np.zeros((0, p.max_sequence_length), dtype=np.int64)
        self.user_sequences = np.asarray(user_sequences, dtype=np.int64)
        self.n_users = len(self.user_sequences)
        self._derive()
        return self

    def _train_epoch(
        self,
        net: GRU4RecNet,
        train: Sessions,
        sampler: NegativeSampler | None,
        support: torch.Tensor,
        optimizer: IndexedAdagrad,
        epoch: int,
        advance: Advance | None = None,
    ) -> None:
        p = self.params
        dev = self.device
        start = time.perf_counter()
        state: State = []
        total, steps = 0.0, 0
        losses: list[torch.Tensor] = []
        for step in session_parallel_batches(train, p.batch_size):
            if sampler is None and len(step.inputs) < 2:
                break  # no negatives left (the official code stops here too)
            if not state:  # fewer sessions than batch_size means fewer slots
                state = net.initial_state(len(step.inputs), dev)
            state = [h.detach() for h in carry_state(state, step)]
            inputs = torch.from_numpy(step.inputs).to(dev)
            targets = torch.from_numpy(step.targets).to(dev)
            columns = targets if sampler is None else torch.cat([targets, sampler.next_batch()])
            scores, state = net(inputs, state, columns)
            if p.loss == "cross-entropy":
                if p.logq > 0:
                    q = torch.cat([support[targets], support[columns[len(targets) :]] ** p.sample_alpha])
                    scores = scores - p.logq * torch.log(q)
                loss = cross_entropy_loss(scores) / p.batch_size
            else:
                loss = bpr_max_loss(scores, p.bpreg, p.elu_param) / p.batch_size
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if advance is not None:
                advance(len(step.inputs))
            losses.append(loss.detach())
            steps += 1
            if len(losses) >= 256:
                total += self._checked_sum(losses, epoch)
                losses = []
        total += self._checked_sum(losses, epoch)
        self.log.epoch_loss.append(total / max(steps, 1))
        self.log.epoch_seconds.append(time.perf_counter() - start)
        self.log.steps += steps

    @staticmethod
    def _checked_sum(losses: list[torch.Tensor], epoch: int) -> float:
        if not losses:
            return 0.0
        value = float(torch.stack(losses).sum())
        if math.isnan(value):
            raise TrainingDivergedError(f"GRU4Rec loss became NaN in epoch {epoch + 1}; lower the learning rate")
        return value

    # -------------------------------------------------------------------------------- scoring

    def _derive(self) -> None:
        """Per-item tensors derived from the training counts: known-item mask and popularity fallback."""
        counts = self.item_counts
        self.known_items = torch.from_numpy(counts > 0).to(self.device)
        self.fallback_scores = torch.from_numpy(fallback_scores(counts)).to(self.device)

    def _checked_net(self) -> GRU4RecNet:
        self._check_fitted()
        if self.net is None:
            raise ConfigError("gru4rec model is not fitted")
        return self.net

    def initial_state(self, batch_size: int) -> State:
        return self._checked_net().initial_state(batch_size, self.device)

    def step(self, state: State, items: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Scores of every item after one more play per session, and the new state (no gradient)."""
        net = self._checked_net()
        with torch.no_grad():
            state = net.advance(net.embed(items.to(self.device)), state)
            scores = net.score_all(state[-1]).masked_fill(~self.known_items, -math.inf)
        return scores, state

    def score_sequences(self, sequences: npt.ArrayLike) -> torch.Tensor:
        """Scores ``[B, n_items]`` after each padded sequence (``[B, L]``, oldest first, -1 = padding).

        Entries outside ``0..n_items-1`` are skipped like padding; a row without any item gets the fallback.
        """
        net = self._checked_net()
        seq = torch.as_tensor(np.asarray(sequences, dtype=np.int64), device=self.device)
        if seq.ndim != 2:
            raise ConfigError(f"sequences must be a [batch, length] matrix, got shape {tuple(seq.shape)}")
        valid = (seq >= 0) & (seq < self.n_items)
        items = torch.where(valid, seq, torch.zeros_like(seq))
        with torch.no_grad():
            state = net.initial_state(len(seq), self.device)
            for t in range(seq.shape[1]):
                advanced = net.advance(net.embed(items[:, t]), state)
                here = valid[:, t : t + 1]
                state = [torch.where(here, new, old) for new, old in zip(advanced, state, strict=True)]
            scores = net.score_all(state[-1]).masked_fill(~self.known_items, -math.inf)
            return torch.where(valid.any(dim=1, keepdim=True), scores, self.fallback_scores)

    def recommend_sequences(
        self, sequences: npt.ArrayLike, k: int = 10
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Top ``k`` next items per sequence without the sequence's own items; -1 pads when too few remain."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        seq = np.asarray(sequences, dtype=np.int64)
        scores = self.score_sequences(seq).float()
        heard = torch.from_numpy(np.where((seq >= 0) & (seq < self.n_items), seq, self.n_items)).to(self.device)
        scores = torch.cat([scores, torch.full_like(scores[:, :1], -math.inf)], dim=1)
        scores.scatter_(1, heard, -math.inf)
        values, items = torch.topk(scores[:, : self.n_items], min(k, self.n_items), dim=1)
        items = torch.where(torch.isinf(values), torch.full_like(items, -1), items)
        out_items = np.full((len(seq), k), -1, dtype=np.int64)
        out_scores = np.full((len(seq), k), -np.inf, dtype=np.float32)
        out_items[:, : items.shape[1]] = items.cpu().numpy()
        out_scores[:, : values.shape[1]] = values.cpu().numpy()
        return out_items, out_scores

    def score(self, users: npt.NDArray[np.integer[Any]]) -> torch.Tensor:
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        if len(users) and (users.min() < 0 or users.max() >= self.n_users):
            raise ConfigError(f"user indices out of range 0..{self.n_users - 1}")
        return self.score_sequences(self.user_sequences[users])

    def weights(self) -> dict[str, npt.NDArray[np.float32]]:
        """The network's parameters as CPU arrays, by their ``state_dict`` names (what the exporter reads)."""
        net = self._checked_net()
        return {name: value.detach().cpu().numpy() for name, value in net.state_dict().items()}

    # -------------------------------------------------------------------------------- persistence

    def _state(self) -> dict[str, npt.NDArray[Any]]:
        state: dict[str, npt.NDArray[Any]] = {f"net.{name}": value for name, value in self.weights().items()}
        state["item_counts"] = self.item_counts
        state["user_sequences"] = self.user_sequences
        return state

    def _restore(self, arrays: dict[str, npt.NDArray[Any]]) -> None:
        try:
            self.item_counts = arrays["item_counts"].astype(np.int64)
            self.user_sequences = arrays["user_sequences"].astype(np.int64)
            net = GRU4RecNet(self.n_items, self.params)
            weights = {key[4:]: torch.from_numpy(value) for key, value in arrays.items() if key.startswith("net.")}
            net.load_state_dict(weights)
        except (KeyError, RuntimeError) as exc:
            raise ArtifactError(f"saved {self.name} model is incomplete or mismatched: {exc}") from exc
        self.net = net.to(self.device).eval()
        self._derive()


def fallback_scores(counts: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.float32]:
    """Scores for a listener with no recent plays: by play count, as distinct values in (0, 1].

    Distinct values (ties broken by item index) keep the top-k order the same in every runtime; items never
    played get ``-inf`` (never recommended).
    """
    counts = np.asarray(counts)
    order = np.lexsort((np.arange(len(counts)), -counts))  # most played first, then lower index
    known = int((counts > 0).sum())
    scores = np.full(len(counts), -np.inf, dtype=np.float64)
    scores[order[:known]] = (known - np.arange(known)) / max(known, 1)
    return scores.astype(np.float32)
