"""The approximate ensemble (recsys_ann: lookup -> FAISS scorer, which answers ids itself) served by the real Triton.

The version's index is IVF with every list probed (exhaustive), so its answers must be the exact ensemble's;
exclusions, completeness, the fallback and the published recall metric are checked through gRPC.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recsys.core.triton_client import TritonCallError, TritonRecommender
from recsys.stack.triton import TritonConfig, TritonPorts, TritonServer
from serving.contract import RECALL_METRIC
from trainer.ann import AnnPolicy
from trainer.artifacts import Run, load_run
from trainer.triton.family import ENSEMBLE_ANN, ENSEMBLE_B, LOOKUP, SCORER_ANN, SCORER_ONNX, TOPK
from trainer.triton.publish import publish

EXHAUSTIVE = AnnPolicy(kind="ivf_flat", nlist=8, nprobe=8)


@pytest.fixture(scope="module")
def run(small_als_run: Path) -> Run:
    return load_run(small_als_run)


@pytest.fixture(scope="module")
def server(small_als_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("ann-repo")
    publish(small_als_run, repository, ann=EXHAUSTIVE)
    with TritonServer(TritonConfig(model_repository=repository, ports=TritonPorts.auto())) as triton:
        for model in (LOOKUP, SCORER_ONNX, SCORER_ANN, TOPK, ENSEMBLE_B, ENSEMBLE_ANN):  # what the tests compare
            triton.load_model(model)
        yield triton


@pytest.fixture
def client(server: TritonServer) -> Iterator[TritonRecommender]:
    recommender = TritonRecommender(server.urls.grpc)
    yield recommender
    recommender.close()


@pytest.mark.parametrize("top_k", [10, 100])
def test_an_exhaustive_index_answers_what_the_exact_ensemble_does(
    client: TritonRecommender, run: Run, top_k: int
) -> None:
    users = [str(u) for u in run.user_ids.external(np.arange(100)).tolist()]
    exact = client.recommend(ENSEMBLE_B, users, top_k=top_k)
    approximate = client.recommend(ENSEMBLE_ANN, users, top_k=top_k)
    for want, got in zip(exact, approximate, strict=True):
        assert got.item_ids == want.item_ids
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
        assert not got.fallback
        assert got.model_version == 1


def test_heard_items_are_never_recommended_and_top_k_is_honoured(client: TritonRecommender, run: Run) -> None:
    n_items = run.history.shape[1]
    for index in (0, 17, 123):
        user = str(run.user_ids.ids[index])
        heard = set(run.item_ids.ids[run.history[index].indices].astype(str).tolist())
        (everything,) = client.recommend(ENSEMBLE_ANN, [user], top_k=1000)
        assert not heard & set(everything.item_ids)
        assert len(everything.item_ids) == len(set(everything.item_ids)) == n_items - len(heard)
        (three,) = client.recommend(ENSEMBLE_ANN, [user], top_k=3)
        assert three.item_ids == everything.item_ids[:3]


def test_concurrent_requests_with_different_k_each_get_their_own(server: TritonServer, run: Run) -> None:
    """recsys_scorer_ann answers a dynamic batch of requests at once and cuts each to its own k (serving.topk.ranked):
    clients asking 3 and 10 items for the same listeners at the same time each get their own k, the same ranking."""
    from concurrent.futures import ThreadPoolExecutor

    users = [str(u) for u in run.user_ids.external(np.arange(8)).tolist()]
    full = TritonRecommender(server.urls.grpc)
    try:
        answers = full.recommend(ENSEMBLE_ANN, users, top_k=10)
        want = {user: answer.item_ids for user, answer in zip(users, answers, strict=True)}
    finally:
        full.close()

    def ask(k: int) -> list[tuple[str, int, list[str]]]:
        client = TritonRecommender(server.urls.grpc)
        try:
            return [(u, k, client.recommend(ENSEMBLE_ANN, [u], top_k=k)[0].item_ids) for _ in range(5) for u in users]
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        asked = [row for rows in pool.map(ask, [3, 10] * 4) for row in rows]
    assert len(asked) == 8 * 5 * len(users)
    for user, k, items in asked:
        assert items == want[user][:k], (user, k)


def test_an_unknown_listener_gets_the_unchanged_popularity_fallback(client: TritonRecommender, run: Run) -> None:
    listeners = np.bincount(run.history.indices, minlength=run.history.shape[1])
    (exact,) = client.recommend(ENSEMBLE_B, ["nobody-has-this-id"], top_k=20)
    (answer,) = client.recommend(ENSEMBLE_ANN, ["nobody-has-this-id"], top_k=20)
    assert answer.fallback
    assert exact.fallback
    served = run.item_ids.indices(answer.item_ids)
    np.testing.assert_array_equal(listeners[served], listeners[run.item_ids.indices(exact.item_ids)])
    np.testing.assert_array_equal(listeners[served], np.sort(listeners)[::-1][:20])  # ties may come in any order
    np.testing.assert_allclose(answer.scores, exact.scores)


def test_a_bad_top_k_is_invalid_argument_on_the_approximate_path(client: TritonRecommender) -> None:
    with pytest.raises(TritonCallError, match=r"TOP_K must be in 1\.\.1000") as caught:
        client.recommend(ENSEMBLE_ANN, ["1"], top_k=0)
    assert caught.value.status == "INVALID_ARGUMENT"


def test_the_published_recall_is_a_triton_metric(server: TritonServer) -> None:
    line = re.search(rf"^{RECALL_METRIC}\{{(.*)\}} (\S+)$", server.metrics(), re.MULTILINE)
    assert line is not None
    assert f'model="{SCORER_ANN}"' in line.group(1)
    assert 'version="1"' in line.group(1)
    assert float(line.group(2)) == 1.0
