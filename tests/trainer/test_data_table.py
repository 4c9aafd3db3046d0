"""Generic tables: CSV/TSV/Parquet, weights and times in their usual spellings, and one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.core.errors import DataError
from trainer.data.table import load_table


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _pyarrow_works() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:  # missing, or built for another numpy
        return False
    return True


needs_pyarrow = pytest.mark.skipif(not _pyarrow_works(), reason="pyarrow cannot be imported here")


def test_csv_with_integer_ids_and_weights(tmp_path: Path) -> None:
    path = _write(tmp_path / "plays.csv", "user,item,plays\n1,10,3\n1,20,1\n2,10,5\n")
    loaded = load_table(path, user_col="user", item_col="item", weight_col="plays")
    assert (len(loaded), loaded.n_users, loaded.n_items) == (3, 2, 2)
    assert loaded.user_ids.is_integer
    assert loaded.item_ids.index("20") == 1
    assert loaded.to_csr().toarray().tolist() == [[3.0, 1.0], [5.0, 0.0]]
    assert loaded.timestamps is None
    assert loaded.events is None


def test_tsv_with_string_ids_and_no_weight_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "likes.tsv", "listener\tartist\nann\tRadiohead\nbob\tNA\nann\tBjörk\n")
    loaded = load_table(path, user_col="listener", item_col="artist")
    assert not loaded.item_ids.is_integer
    # "NA" is a name, not a missing value.
    assert sorted(map(str, loaded.item_ids.to_list())) == ["Björk", "NA", "Radiohead"]
    assert loaded.weights.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("name", "sep"), [("a.txt", "\t"), ("a.dat", "\t"), ("a.txt", ","), ("a.dat", ",")])
def test_text_separator_is_sniffed(tmp_path: Path, name: str, sep: str) -> None:
    path = _write(tmp_path / name, sep.join(["u", "i"]) + "\n" + sep.join(["1", "2"]) + "\n")
    assert load_table(path, user_col="u", item_col="i").n_items == 1


def test_duplicates_are_summed_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "d.csv", "u,i,w\na,x,1\na,x,2\na,x,4\nb,x,1\nb,y,1\nb,y,1\n")
    with caplog.at_level(logging.WARNING, logger="trainer.data.table"):
        loaded = load_table(path, user_col="u", item_col="i", weight_col="w")
    assert len(loaded) == 3
    assert loaded.to_csr().toarray().tolist() == [[7.0, 0.0], [1.0, 2.0]]
    assert "d.csv: 3 rows repeated a (user, item) pair" in caplog.text


def test_zero_weights_are_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "z.csv", "u,i,w\n1,1,0\n1,2,2.5\n2,1,0\n")
    with caplog.at_level(logging.WARNING, logger="trainer.data.table"):
        loaded = load_table(path, user_col="u", item_col="i", weight_col="w")
    assert "dropped 2 rows with zero weight" in caplog.text
    assert loaded.weights.tolist() == [2.5]
    assert loaded.item_ids.to_list() == [2]  # ids of dropped rows are not kept


def test_only_zero_weights_is_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "z.csv", "u,i,w\n1,1,0\n")
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match="no rows with a positive weight"):
        load_table(path, user_col="u", item_col="i", weight_col="w")


def test_iso_times_become_epoch_seconds_and_events(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.csv",
        "u,i,when\n1,5,2009-05-04T23:08:57Z\n1,6,2009-05-04T23:00:00+00:00\n1,5,2009-05-05 00:00:00\n",
    )
    loaded = load_table(path, user_col="u", item_col="i", time_col="when")
    assert loaded.timestamps is not None
    assert loaded.timestamps.tolist() == [1_241_478_537, 1_241_478_000]  # first play of each pair
    assert loaded.events is not None
    assert loaded.events.timestamps.tolist() == [1_241_478_000, 1_241_478_537, 1_241_481_600]
    assert loaded.item_ids.external(loaded.events.items).tolist() == [6, 5, 5]


def test_numeric_times_are_epoch_seconds(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "u,i,ts\n1,5,1000.7\n1,6,999\n")
    loaded = load_table(path, user_col="u", item_col="i", time_col="ts")
    assert loaded.timestamps is not None
    assert loaded.timestamps.tolist() == [1000, 999]


@needs_pyarrow
def test_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user": ["a", "a", "b"],
            "item": [3, 4, 3],
            "score": [1.0, 2.0, 3.0],
            "at": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"]),
        }
    )
    path = tmp_path / "x.parquet"
    frame.to_parquet(path)
    loaded = load_table(path, user_col="user", item_col="item", weight_col="score", time_col="at")
    assert loaded.to_csr().toarray().tolist() == [[1.0, 2.0], [3.0, 0.0]]
    assert loaded.timestamps is not None
    assert loaded.timestamps.tolist() == [1_577_836_800, 1_577_923_200, 1_578_009_600]


def test_parquet_without_a_parquet_engine_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "x.pq"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"^x\.pq: "):
        load_table(path, user_col="u", item_col="i")


@pytest.mark.parametrize(
    ("name", "text", "options", "message"),
    [
        (
            "r.csv",
            "a,b,c\n1,2,3\n",
            {"weight_col": "rating"},
            "r.csv: column 'rating' not found (columns: a, b, c)",
        ),
        (
            "r.csv",
            "a,b,c\n1,2,3\n",
            {"time_col": "x", "weight_col": "y"},
            "r.csv: columns 'y', 'x' not found",
        ),
        ("r.csv", "a,b,c\n", {}, "r.csv: no rows"),
        ("r.csv", "", {}, "r.csv: file is empty"),
        (
            "r.csv",
            "a,b,c\n1,2,3\n1,3,x7\n",
            {"weight_col": "c"},
            "r.csv: column 'c' has a non-numeric weight 'x7' at line 3",
        ),
        (
            "r.csv",
            "a,b,c\n1,2,3\n1,3,\n",
            {"weight_col": "c"},
            "r.csv: column 'c' has a missing weight at line 3",
        ),
        (
            "r.csv",
            "a,b,c\n1,2,-1\n1,3,2\n",
            {"weight_col": "c"},
            "r.csv: column 'c' has a negative weight -1 at line 2",
        ),
        ("r.csv", "a,b,c\n1,2,3\n,3,3\n", {}, "r.csv: column 'a' has 1 missing ids (first at line 3)"),
        ("r.tsv", "a\tb\tc\n1\t\t3\n", {}, "r.tsv: column 'b' has 1 missing ids (first at line 2)"),
        (
            "r.csv",
            "a,b,c\n1,2,2020-01-01\n1,3,soon\n",
            {"time_col": "c"},
            "r.csv: column 'c' has a time 'soon'",
        ),
        ("r.json", "{}", {}, "r.json: unknown file type '.json'"),
    ],
)
def test_errors_are_one_line_and_name_the_problem(
    tmp_path: Path, name: str, text: str, options: dict[str, str], message: str
) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(DataError) as raised:
        load_table(path, user_col="a", item_col="b", **options)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file or directory"):
        load_table(tmp_path / "nope.csv", user_col="u", item_col="i")


def test_float_ids_that_are_integral_stay_integers(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.csv", "u,i\n1.0,2.0\n3.0,2.0\n")
    loaded = load_table(path, user_col="u", item_col="i")
    assert loaded.user_ids.is_integer
    np.testing.assert_array_equal(loaded.user_ids.ids, [1, 3])
