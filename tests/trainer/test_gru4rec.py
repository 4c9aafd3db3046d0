"""GRU4Rec's pieces against the papers' definitions and the official code, then the model as a whole."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from test_models import RecommenderContract  # the contract every model runs (tests/trainer/test_models.py)

from recsys.core.errors import ArtifactError, ConfigError
from trainer.models.base import Params, Recommender
from trainer.models.gru4rec import (
    GRU4Rec,
    GRU4RecNet,
    GRU4RecParams,
    IndexedAdagrad,
    NegativeSampler,
    TrainingDivergedError,
    bpr_max_loss,
    carry_state,
    cross_entropy_loss,
    fallback_scores,
    session_parallel_batches,
)
from trainer.models.item_knn_sessions import SessionItemKNN
from trainer.sessions import PAD, SessionPopularity, Sessions, evaluate_next_item, sessions_of, temporal_split
from trainer.splits import random_holdout

TINY = GRU4RecParams(layers=(16,), n_sample=32, batch_size=16, n_epochs=2)


def random_sessions(seed: int, n_sessions: int = 40, n_items: int = 30, max_length: int = 7) -> Sessions:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, size=n_sessions)
    starts = rng.permutation(n_sessions) * 10_000  # entry order differs from storage order
    return Sessions(
        items=rng.integers(0, n_items, size=int(lengths.sum())).astype(np.int64),
        timestamps=np.concatenate([start + 60 * np.arange(n) for start, n in zip(starts, lengths, strict=True)]),
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        users=np.arange(n_sessions, dtype=np.int64),
        n_items=n_items,
    )


def cyclic_sessions(n_sessions: int, n_items: int, length: int, seed: int) -> Sessions:
    """Walks i, i+1, i+2, ... (mod n_items) from random starts: the next item is always predictable."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, n_items, size=n_sessions)
    items = (first[:, None] + np.arange(length)[None, :]) % n_items
    return Sessions(
        items=items.ravel().astype(np.int64),
        timestamps=(np.arange(n_sessions)[:, None] * 10_000 + 60 * np.arange(length)[None, :]).ravel(),
        offsets=np.arange(0, n_sessions * length + 1, length, dtype=np.int64),
        users=np.arange(n_sessions, dtype=np.int64),
        n_items=n_items,
    )


# ------------------------------------------------------------------------------------------------ mini-batches


@pytest.mark.parametrize(("seed", "batch_size"), [(0, 1), (1, 4), (2, 16), (3, 100)])
def test_session_parallel_batches_yield_every_pair_in_order(seed: int, batch_size: int) -> None:
    sessions = random_sessions(seed)
    expected = {
        s: list(zip(sessions.session(s)[:-1].tolist(), sessions.session(s)[1:].tolist(), strict=True))
        for s in range(len(sessions))
        if sessions.lengths[s] >= 2
    }
    seen: dict[int, list[tuple[int, int]]] = {}
    entered: list[int] = []
    previous: np.ndarray[Any, Any] | None = None
    for step in session_parallel_batches(sessions, batch_size):
        assert 1 <= len(step.inputs) <= batch_size
        carried = None if previous is None else (previous if step.keep is None else previous[step.keep])
        for slot, session in enumerate(step.sessions.tolist()):
            new = carried is None or carried[slot] != session
            assert step.reset[slot] == new  # a slot is reset exactly when a new session takes it
            if new:
                entered.append(session)
            seen.setdefault(session, []).append((int(step.inputs[slot]), int(step.targets[slot])))
        previous = step.sessions
    assert seen == expected
    by_start = [s for s in np.argsort(sessions.start_times, kind="stable").tolist() if s in expected]
    assert entered == by_start  # sessions take slots in order of their first play


def test_hidden_state_restarts_at_every_session() -> None:
    """The state at each session's end equals running that session alone from a zero state."""
    sessions = random_sessions(5, n_sessions=12)
    net = GRU4RecNet(sessions.n_items, TINY)
    net.reset_parameters(torch.Generator().manual_seed(0))
    net.eval()
    final: dict[int, torch.Tensor] = {}
    state = net.initial_state(3, torch.device("cpu"))
    with torch.no_grad():
        for step in session_parallel_batches(sessions, 3):
            state = carry_state(state, step)
            state = net.advance(net.embed(torch.from_numpy(step.inputs)), state)
            for slot, session in enumerate(step.sessions.tolist()):
                final[session] = state[-1][slot].clone()
        for session, got in final.items():
            alone = net.initial_state(1, torch.device("cpu"))
            for item in sessions.session(session)[:-1].tolist():
                alone = net.advance(net.embed(torch.tensor([item])), alone)
            torch.testing.assert_close(got, alone[-1][0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_negative_samples_follow_popularity_to_the_alpha(alpha: float) -> None:
    counts = np.array([1, 4, 0, 9, 16, 100])
    sampler = NegativeSampler(counts, alpha, 500, torch.Generator().manual_seed(1), torch.device("cpu"))
    draws = torch.cat([sampler.next_batch() for _ in range(400)]).numpy()
    frequency = np.bincount(draws, minlength=len(counts)) / len(draws)
    weights = np.where(counts > 0, counts.astype(float) ** alpha, 0.0)
    np.testing.assert_allclose(frequency, weights / weights.sum(), atol=0.005)
    assert frequency[2] == 0.0  # never-played items are never negatives


# ------------------------------------------------------------------------------------------------ losses


def test_bpr_max_equals_the_papers_formula_by_hand() -> None:
    scores = torch.tensor([[2.0, 0.5, -1.0], [1.0, 0.0, 3.0]])  # 2 targets (diagonal) + 1 shared sample

    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    def row(target: float, negatives: list[float], bpreg: float) -> float:
        exps = [math.exp(r) for r in negatives]
        weights = [e / sum(exps) for e in exps]
        ranking = -math.log(sum(w * sigmoid(target - r) for w, r in zip(weights, negatives, strict=True)))
        return ranking + bpreg * sum(w * r * r for w, r in zip(weights, negatives, strict=True))

    expected = row(2.0, [0.5, -1.0], 0.5) + row(0.0, [1.0, 3.0], 0.5)
    assert float(bpr_max_loss(scores, bpreg=0.5, elu_param=0.0)) == pytest.approx(expected, rel=1e-6)

    def elu(x: float) -> float:
        return x if x > 0 else 0.5 * (math.exp(x) - 1.0)

    with_elu = row(elu(2.0), [elu(0.5), elu(-1.0)], 1.0) + row(elu(0.0), [elu(1.0), elu(3.0)], 1.0)
    assert float(bpr_max_loss(scores, bpreg=1.0, elu_param=0.5)) == pytest.approx(with_elu, rel=1e-6)


def test_cross_entropy_by_hand() -> None:
    scores = torch.tensor([[2.0, 0.5, -1.0], [1.0, 0.0, 3.0]])
    expected = 0.0
    for r, row in enumerate(scores.tolist()):
        expected -= math.log(math.exp(row[r]) / sum(math.exp(v) for v in row))
    assert float(cross_entropy_loss(scores)) == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------ optimiser


def test_adagrad_with_momentum_by_hand() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = IndexedAdagrad([weight], learning_rate=0.1, momentum=0.5, eps=1e-6)
    grad = torch.tensor([0.5, -1.0])
    acc = np.zeros(2)
    velocity = np.zeros(2)
    expected = np.array([1.0, 2.0])
    for _ in range(3):
        weight.grad = grad.clone()
        optimizer.step()
        acc += grad.numpy() ** 2
        velocity = 0.5 * velocity - 0.1 * grad.numpy() / np.sqrt(acc + 1e-6)
        expected += velocity
        np.testing.assert_allclose(weight.detach().numpy(), expected, rtol=1e-6)


def test_sparse_adagrad_touches_only_the_looked_up_rows() -> None:
    table = torch.nn.Embedding(3, 1, sparse=True)
    with torch.no_grad():
        table.weight.fill_(1.0)
    optimizer = IndexedAdagrad(table.parameters(), learning_rate=0.1, momentum=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        (table(torch.tensor([1, 1])).sum() * 0.25).backward()  # two look-ups of row 1: gradient 0.5
        optimizer.step()
    first = -0.1 * 0.5 / math.sqrt(0.25 + 1e-6)
    second = 0.5 * first - 0.1 * 0.5 / math.sqrt(0.5 + 1e-6)
    assert table.weight[:, 0].tolist() == pytest.approx([1.0, 1.0 + first + second, 1.0])


# ------------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_learns_a_predictable_sequence(loss: str) -> None:
    train = cyclic_sessions(400, 100, 10, seed=0)
    test = cyclic_sessions(40, 100, 10, seed=1)
    params = GRU4RecParams(loss=loss, layers=(32,), batch_size=32, n_sample=64, n_epochs=4)
    model = GRU4Rec(params).fit_sessions(train)
    metrics = evaluate_next_item(model, test)
    baseline = evaluate_next_item(SessionPopularity().fit(train), test)
    assert metrics["recall@20"] > 0.95
    assert metrics["mrr@20"] > 0.8
    assert baseline["recall@20"] < 0.5
    assert model.log.epoch_loss[-1] < model.log.epoch_loss[0]


def test_logq_momentum_and_dropout_train_too() -> None:
    """The shape of the official rsc15 cross-entropy setting (logQ 1, momentum, hidden dropout) still learns."""
    params = GRU4RecParams(
        layers=(32,), batch_size=32, n_sample=64, n_epochs=4, logq=1.0, momentum=0.2, dropout_p_hidden=0.2
    )
    model = GRU4Rec(params).fit_sessions(cyclic_sessions(400, 100, 10, seed=0))
    assert evaluate_next_item(model, cyclic_sessions(40, 100, 10, seed=1))["recall@20"] > 0.9


def test_beats_both_baselines_on_synthetic_listening(small_world) -> None:  # type: ignore[no-untyped-def]
    split = temporal_split(sessions_of(small_world.interactions), test_fraction=0.2)
    gru = evaluate_next_item(GRU4Rec(GRU4RecParams(n_epochs=3, n_sample=256)).fit_sessions(split.train), split.test)
    knn = evaluate_next_item(SessionItemKNN().fit(split.train), split.test)
    pop = evaluate_next_item(SessionPopularity().fit(split.train), split.test)
    assert gru["recall@20"] > 2 * pop["recall@20"]
    assert gru["mrr@20"] > knn["mrr@20"]


def test_unknown_items_are_never_scored_and_empty_rows_fall_back() -> None:
    train = cyclic_sessions(50, 20, 5, seed=0)
    train = train.keep_plays(train.items != 7, min_length=2)  # item 7 never played
    model = GRU4Rec(TINY).fit_sessions(train)
    scores = model.score_sequences(np.array([[3, 4, PAD], [PAD, PAD, PAD], [99, PAD, PAD]]))
    assert torch.isinf(scores[:, 7]).all()
    np.testing.assert_array_equal(scores[1].numpy(), fallback_scores(model.item_counts))
    np.testing.assert_array_equal(scores[2].numpy(), scores[1].numpy())  # an unknown id counts as padding
    items, _ = model.recommend_sequences(np.array([[3, 4, PAD]]), k=20)
    assert 7 not in items[0].tolist()
    assert not {3, 4} & set(items[0].tolist())
    assert items[0, -1] == -1  # 20 items, 2 heard, 1 unknown: the list runs out


def test_fallback_scores_are_distinct_and_by_plays() -> None:
    scores = fallback_scores(np.array([5, 0, 9, 5, 1]))
    assert np.argsort(-scores, kind="stable").tolist() == [2, 0, 3, 4, 1]
    assert len(set(scores[np.isfinite(scores)].tolist())) == 4
    assert scores[1] == -np.inf


def test_padding_inside_a_sequence_is_skipped() -> None:
    model = GRU4Rec(TINY).fit_sessions(cyclic_sessions(50, 20, 5, seed=0))
    a = model.score_sequences(np.array([[3, PAD, 4, PAD]]))
    b = model.score_sequences(np.array([[3, 4, PAD, PAD]]))
    torch.testing.assert_close(a, b)


def test_divergence_is_reported() -> None:
    params = GRU4RecParams(layers=(8,), n_sample=8, n_epochs=1, loss="bpr-max")
    object.__setattr__(params, "learning_rate", 1e38)  # past the validated range on purpose: the detector is tested
    with pytest.raises(TrainingDivergedError, match="NaN"):
        GRU4Rec(params).fit_sessions(cyclic_sessions(50, 20, 5, seed=0))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: GRU4RecParams(loss="top1"), "loss"),
        (lambda: GRU4RecParams(layers=()), "layers"),
        (lambda: GRU4RecParams(constrained_embedding=False), "one-hot"),
        (lambda: GRU4RecParams(dropout_p_hidden=1.0), "dropout"),
        (lambda: GRU4RecParams.from_dict({"n_samples": 3}), "unknown parameter"),
    ],
)
def test_bad_params_are_named(factory: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        factory()


def test_params_survive_json() -> None:
    params = GRU4RecParams(layers=(64, 32), loss="bpr-max")
    import json

    assert GRU4RecParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params


def test_separate_embedding_and_stacked_layers_train(tmp_path: Any) -> None:
    params = GRU4RecParams(layers=(16, 12), embedding=8, constrained_embedding=False, n_sample=16, n_epochs=1)
    model = GRU4Rec(params).fit_sessions(cyclic_sessions(60, 20, 5, seed=0))
    model.save(tmp_path / "m.npz")
    loaded = GRU4Rec.load(tmp_path / "m.npz")
    sequences = np.array([[1, 2, 3], [4, PAD, PAD]])
    torch.testing.assert_close(loaded.score_sequences(sequences), model.score_sequences(sequences))


def test_load_refuses_other_models(tmp_path: Any, small_world) -> None:  # type: ignore[no-untyped-def]
    from trainer.models import Popularity

    Popularity().fit(small_world.interactions).save(tmp_path / "p.npz")
    with pytest.raises(ArtifactError, match="not gru4rec"):
        GRU4Rec.load(tmp_path / "p.npz")


@pytest.fixture(scope="module")
def split(small_world):  # type: ignore[no-untyped-def]
    """The contract's split (the same as test_models.py's): a random holdout of the small world's pairs."""
    return random_holdout(small_world.interactions)


class TestGRU4RecContract(RecommenderContract):
    """The project's model contract: users are scored from their latest training session."""

    model_type: ClassVar[type[Recommender]] = GRU4Rec
    params: ClassVar[Params | None] = GRU4RecParams(n_epochs=1, n_sample=256)

    def test_save_load_round_trip(self, fitted: Recommender, split: Any, tmp_path: Any) -> None:
        fitted.save(tmp_path / "m.npz")
        loaded = GRU4Rec.load(tmp_path / "m.npz", device=fitted.device)
        assert loaded.params == fitted.params
        users = np.arange(20)
        a, _ = fitted.recommend(users, 10, exclude=split.train.to_csr())
        b, _ = loaded.recommend(users, 10, exclude=split.train.to_csr())
        np.testing.assert_array_equal(a, b)
