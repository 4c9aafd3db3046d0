"""The real HetRec Last.fm 2K set loads whole, with names, and its ids map both ways."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from recsys.core.errors import DataError
from trainer.data.hetrec import load_hetrec
from trainer.data.interactions import Interactions


@pytest.fixture(scope="module")
def hetrec(hetrec_dir: Path) -> Interactions:
    return load_hetrec(hetrec_dir)


@pytest.mark.shared_data
def test_counts_match_the_release(hetrec: Interactions) -> None:
    assert len(hetrec) == 92_834
    assert hetrec.n_users == 1_892
    assert hetrec.n_items == 17_632
    assert hetrec.weights.min() == 1
    assert hetrec.weights.max() == 352_698
    assert hetrec.timestamps is None
    assert hetrec.events is None


@pytest.mark.shared_data
def test_artist_names_are_attached(hetrec: Interactions) -> None:
    assert hetrec.item_names is not None
    assert len(hetrec.item_names) == hetrec.n_items
    index = hetrec.item_ids.index(1)
    assert index is not None
    assert hetrec.item_label(index) == "MALICE MIZER"
    # Names with quotes survive because the file is read without CSV quoting.
    assert '"Weird Al" Yankovic' in set(hetrec.item_names.tolist())


@pytest.mark.shared_data
def test_id_maps_round_trip(hetrec: Interactions) -> None:
    assert hetrec.user_ids.is_integer
    assert hetrec.item_ids.is_integer
    indices = np.arange(0, hetrec.n_items, 97)
    externals = hetrec.item_ids.external(indices)
    np.testing.assert_array_equal(hetrec.item_ids.indices(externals), indices)
    user = hetrec.user_ids.index("2")
    assert user is not None
    assert hetrec.user_ids.external([user])[0] == 2


@pytest.mark.shared_data
def test_user_2_plays_its_top_artist(hetrec: Interactions) -> None:
    user, item = hetrec.user_ids.index(2), hetrec.item_ids.index(51)
    row = np.flatnonzero((hetrec.users == user) & (hetrec.items == item))
    assert hetrec.weights[row].tolist() == [13_883.0]


def test_folder_without_plays_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"user_artists\.dat: no such file"):
        load_hetrec(tmp_path)


def _write_small_set(folder: Path, *, artists: bool = True) -> None:
    (folder / "user_artists.dat").write_text("userID\tartistID\tweight\n2\t51\t10\n2\t52\t3\n7\t51\t1\n")
    if artists:
        (folder / "artists.dat").write_text(
            'id\tname\turl\tpictureURL\n51\t"Weird Al" Yankovic\thttp://x\thttp://y\n52\tNA\thttp://x\t\n',
            encoding="utf-8",
        )


def test_small_folder_keeps_odd_names(tmp_path: Path) -> None:
    _write_small_set(tmp_path)
    loaded = load_hetrec(tmp_path)
    assert (len(loaded), loaded.n_users, loaded.n_items) == (3, 2, 2)
    assert loaded.item_names is not None
    assert loaded.item_names.tolist() == ['"Weird Al" Yankovic', "NA"]
    assert loaded.to_csr().toarray().tolist() == [[10.0, 3.0], [1.0, 0.0]]


def test_missing_artist_names_warn_and_fall_back_to_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_small_set(tmp_path, artists=False)
    with caplog.at_level(logging.WARNING, logger="trainer.data.hetrec"):
        loaded = load_hetrec(tmp_path)
    assert "artists.dat: not found" in caplog.text
    assert loaded.item_names is None
    assert loaded.item_label(0) == "51"
