"""The Python API (``from recsys import ALS, BPR``): the trainer's own results behind implicit's interface."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import recsys
from recsys import ALS, BPR, FactorRecommender
from recsys.core.errors import ArtifactError, ConfigError, DataError
from trainer.artifacts import load_run
from trainer.data.interactions import from_frame
from trainer.models import ALSParams, BPRParams
from trainer.models import als as trainer_als
from trainer.models import bpr as trainer_bpr
from trainer.pipeline import save_result, train_and_evaluate

ROOT = Path(__file__).resolve().parents[2]
SMALL_ALS: dict[str, Any] = {"factors": 16, "iterations": 5, "seed": 1}
SMALL_BPR: dict[str, Any] = {"factors": 16, "epochs": 3, "seed": 1}


@pytest.fixture(scope="module")
def data(small_world):  # type: ignore[no-untyped-def]
    return small_world.interactions


@pytest.fixture(scope="module")
def als(data) -> ALS:  # type: ignore[no-untyped-def]
    return ALS(device="cpu", **SMALL_ALS).fit(data)


@pytest.fixture(scope="module")
def string_ids() -> Any:
    """Plays with string ids, as a user's own table has them (four taste groups of ten artists)."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(60):
        taste = int(rng.integers(0, 4))
        picked = rng.choice(np.arange(taste * 10, taste * 10 + 15), size=8, replace=False)
        rows += [(f"user-{user}", f"artist-{item}", int(rng.integers(1, 50))) for item in picked]
    frame = pd.DataFrame(rows, columns=["user", "item", "weight"])
    return from_frame(frame)[0]


# ---- the package's public face ------------------------------------------------------------------------------------


def test_exports_resolve_and_unknown_names_do_not() -> None:
    for name in recsys.__all__:
        assert getattr(recsys, name) is not None
        assert name in dir(recsys)
    assert recsys.ALS is ALS
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = recsys.Nope


def test_the_services_kernel_imports_no_torch_or_trainer() -> None:
    """The gateway and the writer import ``recsys.core`` (so ``recsys/__init__``): the exports must stay lazy."""
    probe = (
        "import sys, recsys, recsys.core.errors, recsys.core.settings; "
        "print(sorted(m for m in ('torch', 'trainer', 'recsys.recommenders') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ---- the trainer's own results ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facade", "model", "params"),
    [
        (ALS, trainer_als.ALS(ALSParams(**SMALL_ALS)), SMALL_ALS),
        (BPR, trainer_bpr.BPR(BPRParams(**SMALL_BPR)), SMALL_BPR),
    ],
)
def test_same_seed_same_recommendations_as_the_trainer(data: Any, facade: Any, model: Any, params: Any) -> None:
    """From ``Interactions`` and from the CSR matrix alike: the trainer's model, same seed, same top items."""
    model.fit(data)
    want_items, want_scores = model.recommend(np.arange(data.n_users), 10, exclude=data.to_csr())
    from_data = facade(device="cpu", **params).fit(data)
    matrix = data.to_csr()
    from_matrix = facade(device="cpu", **params).fit(matrix)

    items, scores = from_data.recommend_all(N=10, by="index")
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    np.testing.assert_array_equal(from_matrix.recommend_all(N=10)[0], want_items)
    # implicit's call: rows of the users and their own liked rows.
    users = np.array([3, 0, 17])
    np.testing.assert_array_equal(from_matrix.recommend(users, matrix[users], N=10)[0], want_items[users])
    np.testing.assert_array_equal(from_data.user_factors, model.factors()[0])


def test_external_ids_in_and_out(als: ALS, data: Any) -> None:
    """Synthetic ids are 1..n: asking by id and by index differ by one, on both sides."""
    assert als.user_ids[0] == 1
    by_id, scores = als.recommend(1, N=5)
    by_index, same = als.recommend(0, N=5, by="index")
    np.testing.assert_array_equal(by_id, data.item_ids.external(by_index))
    np.testing.assert_array_equal(scores, same)
    many, _ = als.recommend([1, 2], N=5)
    assert many.shape == (2, 5)
    np.testing.assert_array_equal(many[0], by_id)


def test_string_ids(string_ids: Any) -> None:
    model = ALS(device="cpu", factors=8, iterations=5).fit(string_ids)
    items, _ = model.recommend("user-3", N=4)
    assert len(items) == 4
    assert all(isinstance(item, str) and item.startswith("artist-") for item in items)
    heard = set(string_ids.item_ids.external(string_ids.to_csr()[string_ids.user_ids.index("user-3")].indices))
    assert not heard & set(items)
    similar, scores = model.similar_items("artist-12", N=3)
    assert similar[0] == "artist-12"
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match=r"unknown user id.*'user-999'"):
        model.recommend(["user-1", "user-999"])


# ---- filters ------------------------------------------------------------------------------------------------------


def test_liked_items_are_left_out_unless_asked(als: ALS, data: Any) -> None:
    liked = data.to_csr()
    users = np.arange(data.n_users)
    items, _ = als.recommend_all(N=20, by="index")
    assert not any(set(items[u]) & set(liked[u].indices) for u in users)
    kept, _ = als.recommend_all(N=20, by="index", filter_already_liked_items=False)
    assert sum(len(set(kept[u]) & set(liked[u].indices)) for u in users) > 0  # ALS ranks what users played high


def test_user_items_replace_the_fitted_history_per_row(als: ALS) -> None:
    """implicit's ``user_items``: one row per requested user, even when the same user is asked twice."""
    top, _ = als.recommend(0, N=3, by="index", filter_already_liked_items=False)
    rows = sp.csr_matrix(([1.0, 1.0], ([0, 0], [top[0], top[1]])), shape=(2, als.n_items))
    items, _ = als.recommend([0, 0], rows, N=3, by="index")
    assert items[0, 0] == top[2]  # the first row bans the best two
    assert items[1, 0] == top[0]  # the second row bans nothing


def test_filter_items_are_never_recommended(als: ALS) -> None:
    top, _ = als.recommend([1, 2], N=5)
    banned = top[:, :2].ravel()
    items, _ = als.recommend([1, 2], N=5, filter_items=banned)
    assert not set(items.ravel()) & set(banned)
    similar, _ = als.similar_items(7, N=5, filter_items=[7])
    assert 7 not in similar


def test_a_short_catalog_trims_one_user_and_pads_many() -> None:
    matrix = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], dtype=np.float32))
    model = BPR(device="cpu", factors=4, epochs=2).fit(matrix)
    items, scores = model.recommend(0, N=10)
    assert sorted(items.tolist()) == [2, 3]
    assert np.isfinite(scores).all()
    items, scores = model.recommend([0, 1], N=10)
    assert items.shape == scores.shape == (2, 4)
    assert (items[:, 2:] == -1).all()
    assert np.isneginf(scores[:, 2:]).all()


# ---- similar items and users --------------------------------------------------------------------------------------


def test_similar_items_and_users_are_cosine_neighbours(als: ALS) -> None:
    factors = als.item_factors / np.linalg.norm(als.item_factors, axis=1, keepdims=True)
    items, scores = als.similar_items([3, 10], N=6, by="index")
    assert items.shape == (2, 6)
    assert items[:, 0].tolist() == [3, 10]
    np.testing.assert_allclose(scores[0], factors[items[0]] @ factors[3], rtol=1e-4, atol=1e-5)
    assert set(items[0]) == set(np.argsort(-(factors @ factors[3]))[:6])
    users, user_scores = als.similar_users(5, N=4)
    assert users[0] == 5
    assert (np.diff(user_scores) <= 1e-6).all()


# ---- save and load ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(als: ALS, tmp_path: Path) -> None:
    als.save(tmp_path / "run")
    loaded = ALS.load(tmp_path / "run", device="cpu")
    np.testing.assert_array_equal(loaded.recommend_all(N=10)[0], als.recommend_all(N=10)[0])
    np.testing.assert_array_equal(loaded.user_ids, als.user_ids)
    assert loaded.params == als.params
    assert isinstance(FactorRecommender.load(tmp_path / "run", device="cpu"), ALS)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["model"] == "als"
    assert metrics["evaluated"] is False
    with pytest.raises(ArtifactError, match="holds a als model, not bpr"):
        BPR.load(tmp_path / "run")
    loaded.save(tmp_path / "again")  # a loaded model keeps the metrics of its run
    assert json.loads((tmp_path / "again" / "metrics.json").read_text()) == metrics


def test_load_reads_a_run_of_recsys_train(data: Any, tmp_path: Path) -> None:
    """The run the CLI writes: same recommendations as the trainer's loaded run, by external id."""
    save_result(train_and_evaluate(data, "bpr", SMALL_BPR), tmp_path / "bpr")
    run = load_run(tmp_path / "bpr")
    user = run.user_ids.index(42)
    assert user is not None
    want, _ = run.model.recommend([user], 10, exclude=run.history)
    got, _ = BPR.load(tmp_path / "bpr", device="cpu").recommend(42)
    np.testing.assert_array_equal(got, run.item_ids.external(want[0]))


def test_recsys_publish_takes_a_model_fitted_from_python(tmp_path: Path, string_ids: Any) -> None:
    ALS(device="cpu", factors=8, iterations=3).fit(string_ids).save(tmp_path / "run")
    env = {**os.environ, "RECSYS_PROGRESS": "false", "RECSYS_DEVICE": "cpu", "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "recsys", "publish", str(tmp_path / "run"), "--repository", str(tmp_path / "repo")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "published version 1" in done.stdout
    assert (tmp_path / "repo" / "recsys_a" / "1").is_dir()


# ---- errors -------------------------------------------------------------------------------------------------------


def test_unfitted_model_says_so() -> None:
    model = ALS()
    calls = (lambda: model.recommend(1), lambda: model.similar_items(1), lambda: model.save("x"), lambda: model.model)
    for call in calls:
        with pytest.raises(ConfigError, match=r"ALS is not fitted: call fit\(\) or ALS.load\(\) first"):
            call()


@pytest.mark.parametrize(
    ("user_items", "message"),
    [
        (np.ones((3, 3)), "scipy sparse users x items matrix or Interactions, got ndarray"),
        (sp.csr_matrix((3, 3)), "no nonzero entry"),
        (sp.csr_matrix(np.array([[1.0, -1.0]])), "negative weights"),
        (sp.csr_matrix(np.array([[1.0, np.nan]])), "NaN or infinite"),
    ],
)
def test_fit_refuses_what_it_cannot_learn_from(user_items: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ALS(device="cpu").fit(user_items)


def test_bad_parameters_and_calls(als: ALS, data: Any) -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter.*factor"):
        ALS(factor=3)
    with pytest.raises(ConfigError, match="regularization"):
        ALS(regularization=-1.0)
    with pytest.raises(DataError, match=re.escape(f"unknown user id(s) 0, 99999: the model knows {data.n_users}")):
        als.recommend([1, 0, 99999])
    with pytest.raises(DataError, match=f"user index {data.n_users} out of range"):
        als.recommend(data.n_users, by="index")
    with pytest.raises(DataError, match="indices must be integers"):
        als.recommend("7", by="index")
    with pytest.raises(DataError, match=r"user_items has shape \(300, 400\).*\(1, 400\).*user_items\[userid\]"):
        als.recommend(1, data.to_csr())
    with pytest.raises(DataError, match="must be a scipy sparse matrix"):
        als.recommend(1, [1, 2, 3])
    with pytest.raises(DataError, match="user_items must be 2-d"):
        als.recommend(1, sp.coo_array(np.ones(data.n_items)))
    with pytest.raises(ConfigError, match="N must be an integer >= 1"):
        als.recommend(1, N=0)
    with pytest.raises(ConfigError, match="by must be 'id' or 'index'"):
        als.recommend(1, by="name")  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match="no such run directory"):
        ALS.load(ROOT / "no-such-run")


# ---- the README's example -----------------------------------------------------------------------------------------


def readme_example() -> str:
    """The first ``python`` block of the README's Python API section: the test runs what the docs show."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The Python API", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["ids"].shape == (10,)
    assert (tmp_path / "runs" / "python-als" / "model.npz").is_file()
