"""Variant C (GRU4Rec) served by the real Triton: ``recsys_c`` against the trainer's own next-item answers."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from recsys.core.triton_client import AsyncTritonRecommender, TritonCallError, TritonRecommender
from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer
from serving.contract import MODEL_FILE, ONNX_FILE
from serving.lookup import padded_rows
from trainer.artifacts import save_run
from trainer.data.synthetic import SyntheticConfig, generate
from trainer.export_session import load_session_run, recent_plays
from trainer.exporting import ExportError
from trainer.models.gru4rec import GRU4Rec, GRU4RecParams
from trainer.triton.family import ENSEMBLE_C, FACTOR, SESSION, SESSION_SCORER, Options
from trainer.triton.publish import publish
from trainer.triton.repository import activate, load_all, render_repository, versions

SESSION_STEP_MODELS = SESSION.steps

# Served length below the model's own (12): the lookup must serve the *last* L plays of the latest session.
SERVED_LENGTH = 8
MODEL_LENGTH = 12


@dataclass(frozen=True)
class Served:
    server: TritonServer
    repository: Path
    runs: dict[str, Path]


def _fit(world: Any, seed: int) -> GRU4Rec:
    params = GRU4RecParams(
        layers=(16,), n_sample=64, batch_size=32, n_epochs=1, max_sequence_length=MODEL_LENGTH, seed=seed
    )
    return GRU4Rec(params).fit(world.interactions)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    world = generate(SyntheticConfig(n_users=150, n_items=250, n_genres=6, mean_sessions_per_user=5, seed=11))
    root = tmp_path_factory.mktemp("session-runs")
    runs = {}
    for name, seed in (("v1", 1), ("v2", 2)):
        save_run(root / name, _fit(world, seed), world.interactions, {"model": "gru4rec", "seed": seed})
        runs[name] = root / name
    repository = tmp_path_factory.mktemp("session-repo")
    render_repository(repository, options=Options(sequence_length=SERVED_LENGTH), families=(SESSION,))
    published = publish(runs["v1"], repository)
    assert published.version == 1
    assert published.family is SESSION
    assert published.parity.ok
    with TritonServer(TritonConfig(model_repository=repository, ports=TritonPorts.auto())) as triton:
        assert load_all(triton, repository) == {"session": 1}  # a repository of the session family alone
        yield Served(triton, repository, runs)


@pytest.fixture
def client(served: Served) -> Iterator[TritonRecommender]:
    recommender = TritonRecommender(served.server.urls.grpc)
    yield recommender
    recommender.close()


def _expected(model: GRU4Rec, users: np.ndarray[Any, Any], k: int) -> tuple[Any, Any, Any]:
    """The listeners' served sequences (their last L plays) and the trainer's top k after them."""
    indptr, indices = recent_plays(model.user_sequences, SERVED_LENGTH, model.n_items)
    sequences = padded_rows(indptr, indices, users, SERVED_LENGTH)
    items, scores = model.recommend_sequences(sequences, k)
    return sequences, items, scores


def test_fifty_listeners_get_the_trainers_next_items_minus_what_they_just_heard(
    client: TritonRecommender, served: Served
) -> None:
    run = load_session_run(served.runs["v1"])
    model = run.model
    with_plays = np.flatnonzero((model.user_sequences >= 0).any(axis=1))
    users = with_plays[:50]
    assert len(users) == 50
    sequences, items, scores = _expected(model, users, 10)
    assert (sequences >= 0).sum(axis=1).max() == SERVED_LENGTH  # some rows really were cut to the last L plays
    session = ort.InferenceSession(
        str(served.repository / SESSION_SCORER / "1" / ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    onnx_scores, onnx_items = session.run(
        ["SCORES", "ITEMS"], {"ITEM_SEQUENCE": sequences, "TOP_K": np.full((50, 1), 10, dtype=np.int64)}
    )
    np.testing.assert_array_equal(onnx_items, items)  # the exported scorer, in this process
    answers = client.recommend(ENSEMBLE_C, [str(u) for u in run.user_ids[users].tolist()], top_k=10)
    assert len(answers) == 50
    for row, answer in enumerate(answers):
        assert answer.item_ids == [str(i) for i in run.item_ids[items[row]].tolist()]
        np.testing.assert_allclose(answer.scores, scores[row], atol=1e-5)
        np.testing.assert_allclose(answer.scores, onnx_scores[row], atol=1e-6)
        heard = {str(i) for i in run.item_ids[sequences[row][sequences[row] >= 0]].tolist()}
        assert heard
        assert not heard & set(answer.item_ids)
        assert not answer.fallback
        assert answer.model_version == 1


def test_unknown_listener_gets_the_flagged_popularity_fallback(client: TritonRecommender, served: Served) -> None:
    run = load_session_run(served.runs["v1"])
    (answer,) = client.recommend(ENSEMBLE_C, ["nobody-has-this-id"], top_k=7)
    assert answer.fallback
    counts = run.model.item_counts
    served_counts = counts[[int(np.flatnonzero(run.item_ids.astype(str) == i)[0]) for i in answer.item_ids]]
    assert served_counts.tolist() == sorted(counts.tolist(), reverse=True)[:7]
    empty = np.full((1, SERVED_LENGTH), -1, dtype=np.int64)
    items, _ = run.model.recommend_sequences(empty, 7)
    assert answer.item_ids == [str(i) for i in run.item_ids[items[0]].tolist()]  # ties in the trainer's order


@pytest.mark.parametrize(("user", "top_k", "message"), [("1", 0, "TOP_K"), ("1", 1001, "TOP_K"), ("", 5, "USER_ID")])
def test_bad_requests_are_invalid_argument(client: TritonRecommender, user: str, top_k: int, message: str) -> None:
    with pytest.raises(TritonCallError, match=message) as caught:
        client.recommend(ENSEMBLE_C, [user], top_k=top_k)
    assert caught.value.status == "INVALID_ARGUMENT"


def test_a_batch_answers_as_its_single_requests(client: TritonRecommender, served: Served) -> None:
    run = load_session_run(served.runs["v1"])
    users = [str(u) for u in run.user_ids[[3, 17, 40]].tolist()]
    batch = [*users[:2], "nobody", users[2]]
    answers = client.recommend(ENSEMBLE_C, batch, top_k=5)
    assert [a.user_id for a in answers] == batch
    assert [a.fallback for a in answers] == [False, False, True, False]
    for answer in answers:
        (alone,) = client.recommend(ENSEMBLE_C, [answer.user_id], top_k=5)
        assert alone.item_ids == answer.item_ids
        np.testing.assert_allclose(alone.scores, answer.scores, atol=1e-6)


def test_concurrent_requests_with_different_k_each_get_their_own_k(served: Served) -> None:
    """Requests arriving together share a dynamic batch (the scorer returns the largest k); each is cut back."""
    run = load_session_run(served.runs["v1"])
    users = np.arange(12)
    ks = [3, 10, 25] * 4
    _, items, _ = _expected(run.model, users, 25)

    async def ask() -> list[Any]:
        recommender = AsyncTritonRecommender(served.server.urls.grpc)
        try:
            calls = [
                recommender.recommend(ENSEMBLE_C, [str(run.user_ids[u])], k) for u, k in zip(users, ks, strict=True)
            ]
            return [answer for (answer,) in await asyncio.gather(*calls)]
        finally:
            await recommender.close()

    for user, k, answer in zip(users, ks, asyncio.run(ask()), strict=True):
        assert answer.item_ids == [str(i) for i in run.item_ids[items[user, :k]].tolist()]


def test_broken_weights_are_refused_and_the_repository_untouched(served: Served, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(served.runs["v1"], broken)
    model = GRU4Rec.load(broken / MODEL_FILE)
    assert model.net is not None
    with torch.no_grad():
        model.net.Wy.weight[0, 0] = float("nan")
    model.save(broken / MODEL_FILE)
    before = sorted(p.relative_to(served.repository) for p in served.repository.rglob("*"))
    with pytest.raises(ExportError, match=r"Wy\.weight has 1 NaN/inf"):
        publish(broken, served.repository)
    assert sorted(p.relative_to(served.repository) for p in served.repository.rglob("*")) == before


def test_both_families_share_one_version_counter(served: Served, tmp_path: Path) -> None:
    """A factor run published into a repository holding a session version takes the next number; each family
    keeps its own complete versions (the S3 manifests and the rollback recipe rely on one number per publish)."""
    from trainer.pipeline import save_result, train_and_evaluate

    world = generate(SyntheticConfig(n_users=30, n_items=40, n_genres=2, seed=1))
    save_result(train_and_evaluate(world.interactions, "als", {"iterations": 1}), tmp_path / "als")
    repository = tmp_path / "repo"
    assert publish(served.runs["v1"], repository).version == 1
    factor = publish(tmp_path / "als", repository)
    assert (factor.family, factor.version) == (FACTOR, 2)
    assert versions(repository, SESSION) == [1]
    assert versions(repository, FACTOR) == [2]
    manifest = json.loads((repository / FACTOR.steps[0] / "2" / "publish.json").read_text())
    assert (manifest["family"], manifest["n_items"]) == ("factor", 40)


def test_version_2_swaps_in_and_retires_version_1(served: Served, client: TritonRecommender) -> None:
    """Runs last. Hot swap under traffic: the steps load v2 beside v1, then recsys_c switches its pins at once."""
    run = load_session_run(served.runs["v2"])
    errors: list[Exception] = []
    seen: set[int] = set()
    done = threading.Event()

    def traffic() -> None:
        background = TritonRecommender(served.server.urls.grpc, timeout_s=30)
        try:
            while not done.is_set():
                try:
                    (answer,) = background.recommend(ENSEMBLE_C, ["7"], top_k=10)
                    seen.add(answer.model_version)
                    assert len(answer.item_ids) == 10
                except Exception as exc:  # every failure counts
                    errors.append(exc)
        finally:
            background.close()

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        published = publish(served.runs["v2"], served.repository)
        assert published.version == 2
        assert versions(served.repository, SESSION) == [1, 2]
        activate(served.server, served.repository, SESSION, published.version)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert 2 in seen
    assert seen <= {1, 2}
    users = np.arange(5)
    _, items, _ = _expected(run.model, users, 10)
    answers = client.recommend(ENSEMBLE_C, [str(u) for u in run.user_ids[users].tolist()], top_k=10)
    for row, answer in enumerate(answers):
        assert answer.model_version == 2
        assert answer.item_ids == [str(i) for i in run.item_ids[items[row]].tolist()]
    assert all(served.server.is_model_ready(m, "2") for m in SESSION_STEP_MODELS)
    assert not any(served.server.is_model_ready(m, "1") for m in SESSION_STEP_MODELS)
