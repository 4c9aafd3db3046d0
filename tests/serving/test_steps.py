"""The served steps' numpy work, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.contract import EXCLUDE, ITEM_IDS, SCORES, TOP_K, USER_VECTOR
from serving.lookup import SessionLookup, UserLookup, check_request, decode_user_ids
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
    assert exclude.shape[1] == lookup.width == np.diff(run.history.indptr).max()


def test_session_lookup_holds_compact_indices_and_pads_the_latest_plays(tmp_path: Path) -> None:
    """The session lookup loads its CSR as the user lookup does: int64 ``indptr`` and int32 ``indices`` (half of
    int64's memory; it held int64 copies of both), and still answers int64 sequences padded with -1."""
    np.savez(tmp_path / "ids.npz", user_ids=np.array(["a", "b", "c"]), item_ids=np.array(["x", "y", "z", "w"]))
    indptr, indices = np.array([0, 3, 3, 4], dtype=np.int64), np.array([2, 0, 3, 1], dtype=np.int64)
    np.savez(tmp_path / "sequences.npz", indptr=indptr, indices=indices, sequence_length=np.int64(4))
    lookup = SessionLookup(tmp_path, "sequences.npz", 4)
    assert lookup.indptr.dtype == np.int64
    assert lookup.indices.dtype == np.int32
    sequences, fallback = lookup(["a", "b", "nobody", "c"])
    assert sequences.dtype == np.int64
    assert sequences.tolist() == [[2, 0, 3, -1], [-1] * 4, [-1] * 4, [1, -1, -1, -1]]
    assert fallback.tolist() == [False, True, True, False]


def test_lookup_pads_each_batchs_rows_from_the_csr(run_dir: Path) -> None:
    """Regression (issue 17): the lookup held a dense [users + 1, longest history] int64 matrix (2.6 GB at 50,000
    listeners of 10M items); now each batch's rows come from the CSR when it arrives, padded to the version's
    width (one shape for every request, so Triton's dynamic batcher can still join them at the scorer)."""
    run = load_run(run_dir)
    lookup = UserLookup(run_dir)
    lengths = np.diff(run.history.indptr)
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    keys = [str(run.user_ids.ids[short]), "nobody", str(run.user_ids.ids[long])]
    _, exclude, unknown = lookup(keys)
    assert exclude.shape == (3, lengths[long])
    assert lengths[long] == lookup.width
    for row, user in ((0, short), (2, long)):
        heard = run.history[user].indices
        assert sorted(exclude[row][exclude[row] >= 0].tolist()) == sorted(heard.tolist())
        assert (exclude[row, len(heard) :] == -1).all()
    assert (exclude[1] == -1).all()
    assert unknown.tolist() == [False, True, False]
    assert lookup([keys[0]])[1].shape == (1, lookup.width)
    assert lookup(["nobody", "else"])[1].shape == (2, lookup.width)
    held = sum(a.nbytes for a in vars(lookup).values() if isinstance(a, np.ndarray))
    assert lookup.indices.dtype == np.int32
    assert held == lookup.table.nbytes + lookup.indptr.nbytes + lookup.indices.nbytes  # the CSR, no padded matrix


def test_item_ids_map_padding_to_empty(run_dir: Path) -> None:
    run = load_run(run_dir)
    ids = ItemIds(run_dir)(np.array([[0, 2, -1]]))
    assert ids.tolist() == [[str(run.item_ids.ids[0]).encode(), str(run.item_ids.ids[2]).encode(), b""]]


def test_ranked_cuts_each_request_of_a_batch_to_its_own_k(tmp_path: Path) -> None:
    """How recsys_scorer_ann (and recsys_fused) answer a dynamic batch: the scorer ran max(TOP_K) of the whole
    batch for every row; each request gets its own rows, cut to its largest k, as ids ("" where none remain)."""
    from serving.topk import ranked

    np.savez(tmp_path / "ids.npz", item_ids=np.array(["a", "b", "c", "d"]))
    items = np.array([[3, 1, 0], [2, -1, -1], [0, 2, 1]], dtype=np.int64)
    scores = np.array([[9, 8, 7], [6, -np.inf, -np.inf], [5, 4, 3]], dtype=np.float32)
    first, second = ranked(ItemIds(tmp_path), items, scores, [np.array([[2], [1]]), np.array([[3]])])
    assert first[ITEM_IDS].tolist() == [[b"d", b"b"], [b"c", b""]]
    np.testing.assert_array_equal(first[SCORES], np.array([[9, 8], [6, -np.inf]], dtype=np.float32))
    assert second[ITEM_IDS].tolist() == [[b"a", b"c", b"b"]]
    assert second[SCORES].dtype == np.float32
    assert second[SCORES].flags.c_contiguous


@pytest.mark.parametrize(
    "ids",
    [
        np.array([300, 7, -12, 31]),
        np.array([2**64 - 1, 7, 2**63], dtype=np.uint64),
        np.array(["b", "a-1", "c c", "a"]),
        np.array(["é", "naïve", "x", "e"]),
    ],
    ids=str,
)
def test_sorted_ids_find_what_a_dict_of_the_ids_finds(ids: Any) -> None:
    """The live fold-in's item id -> column (serving.lookup.SortedIds): every stored id, and nothing else, even a
    key numpy would cut to the stored width or strip of its NULs, or an integer's other spellings."""
    from serving.lookup import SortedIds

    index = SortedIds(ids)
    as_dict = {str(i): n for n, i in enumerate(ids.tolist())}
    assert len(index) == len(as_dict)
    for key, position in as_dict.items():
        assert index.get(key) == position
    longest = max(as_dict, key=len)
    for missing in ("zz", longest + "0", longest + "\0", "ü", "", "3000", "07", "+7", " 7", "-0", "-1", "9" * 30):
        assert index.get(missing) is None, missing


@pytest.mark.parametrize(
    "ids", [np.array([7, -12, 300]), np.array(["a-1", "b", "c c"]), np.array(["é", "naïve", "x"])], ids=str
)
def test_item_ids_are_utf8_of_the_stored_ids(tmp_path: Path, ids: Any) -> None:
    """Integer, ASCII and non-ASCII ids, kept as stored (no per-item objects at start) and encoded when returned."""
    np.savez(tmp_path / "ids.npz", item_ids=ids)
    mapped = ItemIds(tmp_path)
    assert mapped.ids.dtype.kind != "O"
    got = mapped(np.array([[2, -1, 0], [1, 1, -1]]))
    expected = [str(i).encode() for i in ids.tolist()]
    assert got.dtype == object
    assert got.tolist() == [[expected[2], b"", expected[0]], [expected[1], expected[1], b""]]


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
    assert padded_rows(indptr, indices.astype(np.int32), [1, 0]).tolist() == [[-1, -1], [4, 1]]  # width: longest
    assert padded_rows(indptr, indices, [1, -1]).tolist() == [[-1], [-1]]


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
    index = int(np.argmax(np.diff(run.history.indptr)))  # the longest history: its exclusion row must grow
    user = str(run.user_ids.ids[index])
    row = run.history[index]
    new_item = int(np.setdiff1d(np.arange(run.history.shape[1]), row.indices)[0])
    heard_again = int(row.indices[0])
    lookup.live.add([(user, new_item), (user, heard_again)])
    vectors, exclude, _ = lookup([user, str(run.user_ids.ids[0])])
    items = np.append(row.indices, new_item)
    plays = np.append(row.data, 1.0)
    plays[0] += 1.0
    np.testing.assert_allclose(vectors[0, :-1], run.model.fold_in(items, plays), rtol=1e-4, atol=1e-5)  # type: ignore[attr-defined]
    assert exclude.shape[1] == lookup.width + 1  # every training exclusion kept, the live item added once
    assert sorted(exclude[0].tolist()) == sorted(items.tolist())
    first = run.history[0].indices
    assert exclude[1, : len(first)].tolist() == first.tolist()
    assert (exclude[1, len(first) :] == -1).all()


def test_training_plays_are_read_from_the_csr(run_dir: Path) -> None:
    run = load_run(run_dir)
    plays = UserLookup(run_dir).training_plays()
    items, counts = plays.get(str(run.user_ids.ids[3]))  # type: ignore[misc]
    assert items.tolist() == run.history[3].indices.tolist()
    np.testing.assert_allclose(counts, run.history[3].data)
    assert plays.get("nobody") is None
