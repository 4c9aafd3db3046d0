"""The served steps' numpy work, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.contract import EXCLUDE, TOP_K, USER_VECTOR
from serving.lookup import UserLookup, check_request, decode_user_ids
from serving.scorer import Scorer, stack_rows
from serving.topk import ItemIds
from trainer.artifacts import load_run
from trainer.export import export_all
from trainer.pipeline import save_result, train_and_evaluate


@pytest.fixture(scope="module")
def run_dir(small_world: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ALS run with its exports beside it: what a published lookup / scorer version folder holds."""
    directory = tmp_path_factory.mktemp("run")
    save_result(train_and_evaluate(small_world.interactions, "als", {"iterations": 3}), directory)
    run = load_run(directory)
    export_all(run.model, run.history, directory)  # type: ignore[arg-type]
    return directory


def test_lookup_maps_ids_and_pads_history(run_dir: Path) -> None:
    run = load_run(run_dir)
    lookup = UserLookup(run_dir)
    first = str(run.user_ids.ids[0])
    vectors, exclude, unknown = lookup([first, "stranger"])
    assert unknown.tolist() == [False, True]
    users = run.model.factors()[0]  # type: ignore[attr-defined]
    np.testing.assert_array_equal(vectors[0, :-1], users[0])
    assert vectors[0, -1] == 0.0
    assert vectors[1].tolist() == [0.0] * users.shape[1] + [1.0]  # the fallback pseudo-user
    heard = run.history[0].indices
    assert exclude[0, : len(heard)].tolist() == heard.tolist()
    assert (exclude[0, len(heard) :] == -1).all()
    assert (exclude[1] == -1).all()
    assert exclude.shape[1] == np.diff(run.history.indptr).max()


def test_item_ids_map_padding_to_empty(run_dir: Path) -> None:
    run = load_run(run_dir)
    ids = ItemIds(run_dir)(np.array([[0, 2, -1]]))
    assert ids.tolist() == [[str(run.item_ids.ids[0]).encode(), str(run.item_ids.ids[2]).encode(), b""]]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_scorer_runs_the_published_exports(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    run = load_run(run_dir)
    vectors, exclude, _ = UserLookup(run_dir)(["1", "2"])
    scores, items = Scorer(run_dir, fmt, (USER_VECTOR, EXCLUDE, TOP_K))(vectors, exclude, np.array([[5], [3]]))
    expected, _ = run.model.recommend(run.user_ids.indices(["1", "2"]), 5, exclude=run.history)
    np.testing.assert_array_equal(items, expected)
    assert scores.shape == (2, 5)


def test_requests_are_checked() -> None:
    assert check_request(["1"], np.array([10]), 1000) is None
    assert check_request(["1"], np.array([0]), 1000) == "TOP_K must be in 1..1000, got 0"
    assert check_request([" "], np.array([5]), 1000) == "USER_ID must not be empty"
    assert decode_user_ids(np.array([[b"a"], [b"\xff"]], dtype=object)) == ["a", "\ufffd"]


def test_exclusion_blocks_are_padded_to_the_widest() -> None:
    out = stack_rows([np.array([[1, 2]]), np.array([[3, 4, 5]])])
    assert out.tolist() == [[1, 2, -1], [3, 4, 5]]


def test_onnx_serving_steps_never_load_torch(run_dir: Path) -> None:
    """The lookup, top-k and ONNX scorer processes stay small: none of them may import torch, scipy or pandas."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from serving.lookup import UserLookup\n"
        "from serving.scorer import Scorer\n"
        "from serving.topk import ItemIds\n"
        f"folder = Path({str(run_dir)!r})\n"
        "vectors, exclude, _ = UserLookup(folder)(['1'])\n"
        "scorer = Scorer(folder, 'onnx', ('USER_VECTOR', 'EXCLUDE', 'TOP_K'))\n"
        "scores, items = scorer(vectors, exclude, np.array([[3]]))\n"
        "ItemIds(folder)(items)\n"
        "print(sorted(m for m in ('torch', 'scipy', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_padded_rows_pads_skips_unknown_and_refuses_overflow() -> None:
    from serving.lookup import padded_rows

    indptr, indices = np.array([0, 2, 2, 5]), np.array([4, 1, 7, 8, 9])
    assert padded_rows(indptr, indices, [0, 1, -1, 2], 3).tolist() == [
        [4, 1, -1],
        [-1, -1, -1],
        [-1, -1, -1],
        [7, 8, 9],
    ]
    with pytest.raises(ValueError, match="more than the width 2"):
        padded_rows(indptr, indices, [2], 2)


@pytest.mark.parametrize("weighting", ["bm25", "log1p", "raw"])
def test_served_fold_in_is_the_trainers_fold_in(small_world: Any, tmp_path: Path, weighting: str) -> None:
    from serving.fold_in import FoldIn
    from trainer.models import ALS, ALSParams

    data = small_world.interactions
    model = ALS(ALSParams(iterations=2, weighting=weighting)).fit(data)
    export_all(model, data.to_csr(), tmp_path)
    fold_in = FoldIn(tmp_path / "fold_in.npz")
    items, plays = np.array([3, 10, 42, 77], dtype=np.int64), np.array([1.0, 5.0, 2.0, 1.0])
    served = fold_in.vector(items, plays)
    np.testing.assert_allclose(served[:-1], model.fold_in(items, plays), rtol=1e-4, atol=1e-5)
    assert served[-1] == 0.0


def test_live_plays_fold_a_new_listener_in_and_exclude_what_they_played(run_dir: Path) -> None:
    from serving.fold_in import FoldIn, LivePlays

    run = load_run(run_dir)
    lookup = UserLookup(run_dir)
    lookup.live = LivePlays(FoldIn(run_dir / "fold_in.npz"), lookup.training_plays(), lookup.width)
    before, _, unknown = lookup(["brand-new"])
    assert unknown.tolist() == [True]
    assert lookup.live.add([("brand-new", 5), ("brand-new", 9), ("brand-new", 5)]) == {"brand-new"}
    vectors, exclude, unknown = lookup(["brand-new", "stranger"])
    assert unknown.tolist() == [False, True]
    expected = run.model.fold_in(np.array([5, 9]), np.array([2.0, 1.0]))  # type: ignore[attr-defined]
    np.testing.assert_allclose(vectors[0, :-1], expected, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(vectors[0], before[0])
    assert set(exclude[0][exclude[0] >= 0].tolist()) == {5, 9}


def test_live_plays_of_a_known_listener_add_to_their_training_plays(run_dir: Path) -> None:
    from serving.fold_in import FoldIn, LivePlays

    run = load_run(run_dir)
    lookup = UserLookup(run_dir)
    lookup.live = LivePlays(FoldIn(run_dir / "fold_in.npz"), lookup.training_plays(), lookup.width)
    user = str(run.user_ids.ids[0])
    row = run.history[0]
    new_item = int(np.setdiff1d(np.arange(run.history.shape[1]), row.indices)[0])
    lookup.live.add([(user, new_item)])
    vectors, exclude, _ = lookup([user])
    items = np.append(row.indices, new_item)
    plays = np.append(row.data, 1.0)
    np.testing.assert_allclose(vectors[0, :-1], run.model.fold_in(items, plays), rtol=1e-4, atol=1e-5)  # type: ignore[attr-defined]
    assert new_item in exclude[0].tolist()
