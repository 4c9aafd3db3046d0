"""The approximate scorer's index (trainer.ann) and its retriever (serving.retrieval), in process, on a small run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from recsys.core.errors import ConfigError
from serving.contract import ANN_FILE, ANN_INDEX_FILE, MANIFEST_FILE
from serving.lookup import UserLookup
from serving.retrieval import AnnRetriever, SearchSettings
from trainer.ann import AnnPolicy, build_and_check, default_nlist, recall_at_k
from trainer.artifacts import Run, load_run
from trainer.export import user_table
from trainer.exporting import ExportError
from trainer.models.base import FactorModel
from trainer.triton.family import ENSEMBLE_ANN, ENSEMBLE_B, FACTOR, LOOKUP, SCORER_ANN
from trainer.triton.publish import publish
from trainer.triton.repository import verify, version_ensembles, versions


@pytest.fixture(scope="module")
def run(small_als_run: Path) -> Run:
    return load_run(small_als_run)


def _factor(run: Run) -> FactorModel:
    assert isinstance(run.model, FactorModel)
    return run.model


def _index(run: Run, folder: Path, policy: AnnPolicy) -> tuple[AnnRetriever, dict[str, Any]]:
    model = _factor(run)
    _, items, bias = model.factors()
    fallback = np.bincount(run.history.indices, minlength=model.n_items).astype(np.float32)
    report = build_and_check(items, bias, fallback, user_table(model), run.history, folder, policy)
    return AnnRetriever.load(folder), report.as_manifest()


def _requests(run: Run, folder: Path, users: npt.NDArray[np.int64]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """What recsys_lookup emits for these users: their rows and padded exclusions."""
    lookup = UserLookup(folder)
    vectors, exclude, _ = lookup([str(u) for u in run.user_ids.external(users).tolist()])
    return vectors, exclude


@pytest.fixture(scope="module")
def published(small_als_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repo")
    publish(small_als_run, repository, ann=AnnPolicy(kind="flat"))
    return repository


def test_an_exhaustive_index_answers_exactly_what_the_trainer_does(run: Run, published: Path) -> None:
    manifest = json.loads((published / SCORER_ANN / "1" / MANIFEST_FILE).read_text())
    assert manifest["ann"]["kind"] == "flat"  # asked for (400 items: auto would build none)
    assert manifest["ann"]["recall_at_10"] == 1.0
    retriever = AnnRetriever.load(published / SCORER_ANN / "1")
    users = np.arange(100)
    vectors, exclude = _requests(run, published / LOOKUP / "1", users)
    for k in (1, 10, 50):
        scores, items = retriever(vectors, exclude, np.full((len(users), 1), k))
        expected_items, expected_scores = run.model.recommend(users, k, exclude=run.history)
        np.testing.assert_array_equal(items, expected_items)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize(
    "policy",
    [
        AnnPolicy(kind="ivf_flat", nlist=8, nprobe=1, min_recall=0.0),
        AnnPolicy(kind="hnsw", ef_search=16, min_recall=0.0),
    ],
    ids=["ivf-nprobe1", "hnsw"],
)
def test_heard_items_are_never_answered_and_every_row_is_complete(run: Run, tmp_path: Path, policy: AnnPolicy) -> None:
    """With 1 list of 8 probed most rows come back short: they are searched again exhaustively, minus what the
    listener heard, so top_k = every item still yields exactly the items they did not hear."""
    retriever, _ = _index(run, tmp_path / "index", policy)
    users = np.arange(0, run.model.n_users, 7)
    heard = [run.history[u].indices for u in users]
    exclude = np.full((len(users), max(len(h) for h in heard)), -1, dtype=np.int64)
    for row, h in enumerate(heard):
        exclude[row, : len(h)] = h
    vectors = user_table(_factor(run))[users]
    for k in (10, run.model.n_items):
        scores, items = retriever(vectors, exclude, np.full((len(users), 1), k))
        for row, h in enumerate(heard):
            answered = items[row][items[row] >= 0]
            assert not np.isin(answered, h).any()
            assert len(answered) == min(k, run.model.n_items - len(h))
            assert len(set(answered.tolist())) == len(answered)
            assert np.all(np.diff(scores[row][: len(answered)]) <= 1e-6)  # best first
    full_items = retriever(vectors, exclude, np.full((len(users), 1), run.model.n_items))[1]
    expected = run.model.recommend(users, 10, exclude=run.history)[0]
    np.testing.assert_array_equal(full_items[:, :10], expected)  # the complete answer is the exact one


def test_the_fallback_row_gets_the_popularity_order_minus_its_exclusions(run: Run, tmp_path: Path) -> None:
    retriever, _ = _index(run, tmp_path, AnnPolicy(kind="ivf_flat", nlist=8, nprobe=1, min_recall=0.0))
    listeners = np.bincount(run.history.indices, minlength=run.model.n_items)
    pseudo = np.zeros((2, _factor(run).factors()[0].shape[1] + 1), dtype=np.float32)
    pseudo[:, -1] = 1.0
    heard = run.history[3].indices
    exclude = np.full((2, len(heard)), -1, dtype=np.int64)
    exclude[1] = heard
    scores, items = retriever(pseudo, exclude, np.full((2, 1), 20))
    np.testing.assert_array_equal(listeners[items[0]], np.sort(listeners)[::-1][:20])  # ties in any order
    np.testing.assert_array_equal(scores[0], listeners[items[0]].astype(np.float32))
    left = np.setdiff1d(np.arange(run.model.n_items), heard)
    assert not np.isin(items[1], heard).any()
    np.testing.assert_array_equal(listeners[items[1]], np.sort(listeners[left])[::-1][:20])


def test_the_recall_gate_refuses_a_poor_index_and_leaves_the_repository_untouched(
    small_als_run: Path, tmp_path: Path
) -> None:
    repository = tmp_path / "repo"
    publish(small_als_run, repository)
    before = sorted(p.relative_to(repository) for p in repository.rglob("*"))
    with pytest.raises(ExportError, match=r"recall@10 0\.\d+ < 0\.95"):
        publish(small_als_run, repository, ann=AnnPolicy(kind="ivf_flat", nlist=8, nprobe=1))
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == before
    assert versions(repository, FACTOR) == [1]


def test_a_small_catalogue_is_published_without_an_index_unless_asked(small_als_run: Path, tmp_path: Path) -> None:
    """Issue 17: the index is built when asked or from the threshold on; a version without one has no
    recsys_scorer_ann folder, records ``"ann": null``, is complete and intact, and does not serve recsys_ann. A
    publish that does not choose keeps the newest version's choice."""
    repository = tmp_path / "repo"
    default = publish(small_als_run, repository)  # 400 items, auto: below the 1M threshold
    assert not (repository / SCORER_ANN / "1").exists()
    manifest = json.loads((repository / LOOKUP / "1" / MANIFEST_FILE).read_text())
    assert "ann" in manifest
    assert manifest["ann"] is None
    assert SCORER_ANN not in manifest["checksums"]
    assert versions(repository, FACTOR) == [1]
    assert verify(repository, FACTOR, 1) == []
    assert ENSEMBLE_ANN not in version_ensembles(repository, FACTOR, 1)
    assert ENSEMBLE_B in version_ensembles(repository, FACTOR, 1) == default.ensembles
    assert SCORER_ANN not in default.steps

    # auto, at the threshold (the gate is off: an HNSW graph over 400 inner-product rows may leave a few
    # unreachable, and this test is about when an index is built, not how good it is)
    lowered = publish(small_als_run, repository, ann=AnnPolicy(threshold_items=400, min_recall=0.0))
    index = json.loads((repository / SCORER_ANN / "2" / MANIFEST_FILE).read_text())["ann"]
    assert index["kind"] == "hnsw"
    assert 0.0 < index["recall_at_10"] <= 1.0
    assert (repository / SCORER_ANN / "2" / ANN_INDEX_FILE).is_file()
    assert ENSEMBLE_ANN in version_ensembles(repository, FACTOR, 2) == lowered.ensembles
    assert verify(repository, FACTOR, 2) == []

    # a publish that does not choose (the loop's retrains) keeps the lineage's recorded policy: "auto" stays auto
    # (no index for 400 items at the default threshold), an asked kind stays that kind, so recsys_ann stays served
    def policy_of(model: str, version: int) -> str:
        return str(json.loads((repository / model / str(version) / MANIFEST_FILE).read_text())["ann_policy"])

    assert policy_of(LOOKUP, 2) == "auto"
    publish(small_als_run, repository)
    assert not (repository / SCORER_ANN / "3").exists()
    publish(small_als_run, repository, ann=AnnPolicy(kind="hnsw", min_recall=0.0))
    publish(small_als_run, repository, ann=AnnPolicy(kind="inherit", min_recall=0.0))
    assert json.loads((repository / SCORER_ANN / "5" / MANIFEST_FILE).read_text())["ann"]["kind"] == "hnsw"
    assert policy_of(SCORER_ANN, 5) == "hnsw"

    # a canary lineage without versions of its own follows its base family's newest (hnsw here)
    publish(small_als_run, repository, family=FACTOR.renamed("_canary"), ann=AnnPolicy(kind="inherit", min_recall=0.0))
    assert policy_of(f"{SCORER_ANN}_canary", 6) == "hnsw"

    publish(small_als_run, repository, ann=AnnPolicy(kind="none", threshold_items=0))  # never, whatever the size
    assert not (repository / SCORER_ANN / "7").exists()
    # inherits "none": with the threshold at 0, auto would have built one
    publish(small_als_run, repository, ann=AnnPolicy(kind="inherit", threshold_items=0))
    assert not (repository / SCORER_ANN / "8").exists()
    assert policy_of(LOOKUP, 8) == "none"
    assert versions(repository, FACTOR) == [1, 2, 3, 4, 5, 7, 8]


def test_tuning_picks_the_smallest_nprobe_that_passes_and_the_manifest_records_it(run: Run, tmp_path: Path) -> None:
    _, report = _index(run, tmp_path, AnnPolicy(kind="ivf_flat", nlist=8))
    assert report["nlist"] == 8
    assert report["recall_at_10"] >= 0.95
    assert report["tuning_recall_at_10"] >= 0.95
    if report["nprobe"] > 1:  # one list less must have failed the tuning sample (bisected to one list at nlist 8)
        fewer = AnnPolicy(kind="ivf_flat", nlist=8, nprobe=report["nprobe"] - 1, min_recall=0.0)
        _, lower = _index(run, tmp_path / "lower", fewer)
        assert lower["recall_at_10"] < 1.0
    assert (tmp_path / ANN_INDEX_FILE).is_file()
    assert (tmp_path / ANN_FILE).is_file()


def test_policy_and_helpers_reject_or_compute_what_they_should() -> None:
    with pytest.raises(ConfigError, match="unknown index kind"):
        AnnPolicy(kind="lsh")
    with pytest.raises(ConfigError, match="min_recall"):
        AnnPolicy(min_recall=1.5)
    assert AnnPolicy(threshold_items=1000).kind_for(999) is None  # auto: no index below the threshold
    assert AnnPolicy(threshold_items=1000).kind_for(1000) == "hnsw"
    assert AnnPolicy(kind="flat", threshold_items=10**9).kind_for(10) == "flat"  # asked for: whatever the size
    assert AnnPolicy(kind="none", threshold_items=0).kind_for(10**7) is None
    assert default_nlist(1_000_000) == 4096
    assert default_nlist(10**9) == 16384
    assert recall_at_k(np.array([[1, 2, -1]]), [np.array([1, 3])]) == 0.5
    # an answered item tied with the exact k-th score counts (among ties the exact top-k is arbitrary)
    answered, kth = np.array([[0.9, 0.5]], dtype=np.float32), np.array([0.5], dtype=np.float32)
    assert recall_at_k(np.array([[1, 7]]), [np.array([1, 3])], approx_scores=answered, exact_kth=kth) == 1.0
    assert recall_at_k(np.array([[1, 7]]), [np.array([1, 3])], approx_scores=answered - 0.1, exact_kth=kth) == 0.5
    with pytest.raises(ValueError, match="unknown index kind"):
        SearchSettings("lsh")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_items_without_factors_stay_out_of_the_index_and_are_merged_by_their_score(
    run: Run, tmp_path: Path, kind: str
) -> None:
    """Never-played items sit at the origin (ALS): left in, 99% of a 10M catalogue drowned HNSW's graph (recall@10
    0.86). They are answered from one list by their score, merged with the index's candidates."""
    model = _factor(run)
    users_table, (_, items, _) = user_table(model), model.factors()
    items = items.copy()
    items[::3] = 0.0  # a third of the catalogue never played
    fallback = np.bincount(run.history.indices, minlength=model.n_items).astype(np.float32)
    policy = AnnPolicy(kind=kind, ef_search=64, min_recall=0.0)
    report = build_and_check(items, None, fallback, users_table, run.history, tmp_path, policy).as_manifest()
    assert report["indexed_items"] == model.n_items - len(items[::3])
    assert report["n_items"] == model.n_items
    retriever = AnnRetriever.load(tmp_path)
    users = np.arange(0, model.n_users, 5)
    exclude = np.full((len(users), max(len(run.history[u].indices) for u in users)), -1, dtype=np.int64)
    for row, u in enumerate(users):
        exclude[row, : len(run.history[u].indices)] = run.history[u].indices
    scores, found = retriever(users_table[users], exclude, np.full((len(users), 1), 30))
    exact = users_table[users][:, :-1] @ items.T
    for row, u in enumerate(users):
        exact[row, run.history[u].indices] = -np.inf
        assert not np.isin(found[row], run.history[u].indices).any()
        assert len(set(found[row].tolist())) == 30
        np.testing.assert_allclose(scores[row], exact[row, found[row]], atol=1e-5)  # true scores, best first
        if kind == "flat":
            np.testing.assert_allclose(scores[row], np.sort(exact[row])[::-1][:30], atol=1e-5)
