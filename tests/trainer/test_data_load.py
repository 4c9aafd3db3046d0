"""load_dataset picks the right loader from the spec alone, and asks for columns only for tables."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from recsys.core.errors import DataError
from trainer.data.load import is_lastfm1k, load_dataset
from trainer.data.synthetic import SyntheticConfig

TINY = SyntheticConfig(n_users=30, n_items=100, n_genres=4)


def test_synthetic() -> None:
    loaded = load_dataset("synthetic", synthetic=TINY)
    assert (loaded.n_users, loaded.n_items) == (30, 100)
    assert loaded.events is not None


def test_synthetic_ignores_column_options_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trainer.data.load"):
        load_dataset("synthetic", user_col="u", synthetic=TINY)
    assert "--user-col ignored" in caplog.text


@pytest.mark.shared_data
def test_hetrec_folder(hetrec_dir: Path) -> None:
    loaded = load_dataset(str(hetrec_dir))
    assert (loaded.n_users, loaded.n_items) == (1_892, 17_632)
    assert loaded.item_names is not None


def test_lastfm1k_log_is_sniffed(tmp_path: Path) -> None:
    path = tmp_path / "plays.tsv"
    path.write_text(
        "user_000001\t2009-05-04T23:08:57Z\t\tDeep Dish\t\tTrack\n"
        "user_000001\t2009-05-04T23:04:57Z\t\tDeep Dish\t\tOther track\n",
        encoding="utf-8",
    )
    assert is_lastfm1k(path)
    loaded = load_dataset(str(path))
    assert loaded.weights.tolist() == [2.0]
    assert loaded.events is not None


def test_table_with_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("u\ti\tw\n1\t2\t3\n", encoding="utf-8")
    assert not is_lastfm1k(path)
    loaded = load_dataset(str(path), user_col="u", item_col="i", weight_col="w")
    assert loaded.weights.tolist() == [3.0]


def test_six_field_table_without_a_time_is_a_table(tmp_path: Path) -> None:
    path = tmp_path / "six.tsv"
    path.write_text("a\tb\tc\td\te\tf\n1\t2\t3\t4\t5\t6\n", encoding="utf-8")
    assert not is_lastfm1k(path)
    assert load_dataset(str(path), user_col="a", item_col="b").n_items == 1


def test_table_without_columns_says_which_options(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("u,i\n1,2\n", encoding="utf-8")
    with pytest.raises(DataError, match="--user-col and --item-col"):
        load_dataset(str(path), user_col="u")


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as raised:
        load_dataset(str(missing))
    assert str(raised.value) == f"{missing}: no such file or directory"


def test_folder_that_is_not_hetrec(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no user_artists\.dat"):
        load_dataset(str(tmp_path))
