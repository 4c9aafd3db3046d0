"""The served steps' numpy work, without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer.artifacts import load_run
from trainer.export import export_all
from trainer.pipeline import save_result, train_and_evaluate
from trainer.serving_steps import ItemIds, Scorer, UserLookup, check_request, decode_user_ids, stack_exclusions


@pytest.fixture(scope="module")
def run_dir(small_world: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("run")
    save_result(train_and_evaluate(small_world.interactions, "als", {"iterations": 3}), directory)
    return directory


def test_lookup_maps_ids_and_pads_history(run_dir: Path) -> None:
    run = load_run(run_dir)
    lookup = UserLookup(run_dir)
    first = str(run.user_ids.ids[0])
    index, exclude = lookup([first, "stranger"])
    assert index.tolist() == [0, -1]
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
    export_all(run.model, run.history, tmp_path)  # type: ignore[arg-type]
    index, exclude = UserLookup(run_dir)(["1", "2"])
    scores, items = Scorer(tmp_path, fmt)(index[:, None], exclude, np.array([[5], [3]]))
    expected, _ = run.model.recommend(index, 5, exclude=run.history)
    np.testing.assert_array_equal(items, expected)
    assert scores.shape == (2, 5)


def test_requests_are_checked() -> None:
    assert check_request(["1"], np.array([10]), 1000) is None
    assert check_request(["1"], np.array([0]), 1000) == "TOP_K must be in 1..1000, got 0"
    assert check_request([" "], np.array([5]), 1000) == "USER_ID must not be empty"
    assert decode_user_ids(np.array([[b"a"], [b"\xff"]], dtype=object)) == ["a", "\ufffd"]


def test_exclusion_blocks_are_padded_to_the_widest() -> None:
    out = stack_exclusions([np.array([[1, 2]]), np.array([[3, 4, 5]])])
    assert out.tolist() == [[1, 2, -1], [3, 4, 5]]


def test_onnx_serving_steps_never_load_torch(run_dir: Path, tmp_path: Path) -> None:
    """The lookup, top-k and ONNX scorer processes stay small: none of them may import torch, scipy or pandas."""
    import subprocess
    import sys

    run = load_run(run_dir)
    export_all(run.model, run.history, tmp_path)  # type: ignore[arg-type]
    for name in ("ids.npz", "history.npz"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from trainer.serving_steps import ItemIds, Scorer, UserLookup\n"
        f"folder = Path({str(tmp_path)!r})\n"
        "index, exclude = UserLookup(folder)(['1'])\n"
        "scores, items = Scorer(folder, 'onnx')(index[:, None], exclude, np.array([[3]]))\n"
        "ItemIds(folder)(items)\n"
        "print(sorted(m for m in ('torch', 'scipy', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_padded_rows_pads_skips_unknown_and_refuses_overflow() -> None:
    from trainer.serving_steps import padded_rows

    indptr, indices = np.array([0, 2, 2, 5]), np.array([4, 1, 7, 8, 9])
    assert padded_rows(indptr, indices, [0, 1, -1, 2], 3).tolist() == [
        [4, 1, -1],
        [-1, -1, -1],
        [-1, -1, -1],
        [7, 8, 9],
    ]
    with pytest.raises(ValueError, match="more than the width 2"):
        padded_rows(indptr, indices, [2], 2)
