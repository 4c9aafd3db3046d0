"""Last.fm-1K logs: plays counted per (user, artist), events in time order, malformed lines skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from recsys.core.errors import DataError
from trainer.data import lastfm1k
from trainer.data.lastfm1k import load_lastfm1k

DEEP_DISH = "f1b1cf71-bd35-4e99-8624-24a6e15f133a"
SAKAMOTO = "a7f7df4a-77d8-4f12-8acd-5c60c93f4de8"

# Like the real file: newest plays first within each user, empty track ids, free-text names with quotes.
LOG = "\n".join(
    [
        f"user_000001\t2009-05-04T23:08:57Z\t{DEEP_DISH}\tDeep Dish\t\tFuck Me Im Famous (Pacha Ibiza)-09-28-2007",
        f"user_000001\t2009-05-04T13:54:10Z\t{SAKAMOTO}\t坂本龍一\t"
        "f7c1f8f8-b935-45ed-8fc8-7def69d92a10\tThe Last Emperor",
        f"user_000001\t2009-05-04T13:52:04Z\t{SAKAMOTO}\t坂本龍一\t\tMerry Christmas Mr. Lawrence",
        'user_000001\t2009-05-04T13:42:52Z\t\tThe "Unknown" Band\t\tSong 1',
        "user_000001\t2009-05-04T13:40:00Z\tonly\tfour fields",  # malformed: too few fields
        'user_000002\t2009-05-05T10:00:00Z\t\tThe "Unknown" Band\t\tSong 2',
        'user_000002\tyesterday\t\tThe "Unknown" Band\t\tSong 3',  # malformed: bad timestamp
        'user_000002\t2009-05-05T09:00:00Z\t\tThe "Unknown" Band\t\tSong 4\textra',  # malformed: too many
        f"user_000002\t2009-05-05T08:30:00Z\t{DEEP_DISH}\tDeep Dish\t\tFlashdance",
        "",
    ]
)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "userid-timestamp-artid-artname-traid-traname.tsv"
    path.write_text(LOG, encoding="utf-8")
    return path


def test_plays_are_counted_per_user_and_artist(log_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        loaded = load_lastfm1k(log_path)
    assert (loaded.n_users, loaded.n_items, len(loaded)) == (2, 3, 5)
    assert sorted(map(str, loaded.user_ids.to_list())) == ["user_000001", "user_000002"]
    # The artist without a MusicBrainz id is keyed by its name.
    assert sorted(str(v) for v in loaded.item_ids.to_list()) == sorted([DEEP_DISH, SAKAMOTO, 'The "Unknown" Band'])
    counts = {
        (loaded.user_ids.external([u])[0], loaded.item_label(int(i))): w
        for u, i, w in zip(loaded.users, loaded.items, loaded.weights, strict=True)
    }
    assert counts == {
        ("user_000001", "Deep Dish"): 1.0,
        ("user_000001", "坂本龍一"): 2.0,
        ("user_000001", 'The "Unknown" Band'): 1.0,
        ("user_000002", 'The "Unknown" Band'): 1.0,
        ("user_000002", "Deep Dish"): 1.0,
    }
    # One warning, for the three malformed lines; repeated plays are not reported as duplicates.
    assert [r.getMessage() for r in caplog.records] == [f"{log_path.name}: skipped 3 malformed lines of 9"]


def test_events_are_in_time_order_with_epoch_seconds(log_path: Path) -> None:
    loaded = load_lastfm1k(log_path)
    events = loaded.events
    assert events is not None
    assert len(events) == 6
    first_user = loaded.user_ids.index("user_000001")
    mine = events.users == first_user
    assert np.all(np.diff(events.timestamps[mine]) > 0)
    names = [loaded.item_label(int(i)) for i in events.items[mine]]
    assert names == ['The "Unknown" Band', "坂本龍一", "坂本龍一", "Deep Dish"]
    assert events.timestamps[mine][-1] == 1_241_478_537  # 2009-05-04T23:08:57Z
    assert loaded.timestamps is not None
    sakamoto = loaded.item_ids.index(SAKAMOTO)
    row = np.flatnonzero((loaded.users == first_user) & (loaded.items == sakamoto))
    assert loaded.timestamps[row].tolist() == [1_241_445_124]  # the first of the two plays, 13:52:04


def test_small_read_blocks_give_the_same_result(log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = load_lastfm1k(log_path)
    monkeypatch.setattr(lastfm1k, "_BLOCK_BYTES", 50)  # lines straddle blocks; ids repeat across blocks
    pieces = load_lastfm1k(log_path)
    assert whole.user_ids.to_list() == pieces.user_ids.to_list()
    assert whole.item_ids.to_list() == pieces.item_ids.to_list()
    np.testing.assert_array_equal(whole.weights, pieces.weights)
    assert whole.item_names is not None
    assert pieces.item_names is not None
    assert whole.item_names.tolist() == pieces.item_names.tolist()


def test_crlf_line_ends_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "crlf.tsv"
    path.write_bytes(b"u1\t2009-05-04T23:08:57Z\t\tA\t\tt1\r\nu1\t2009-05-04T23:18:57Z\t\tB\t\tt2")
    loaded = load_lastfm1k(path)
    assert (loaded.n_users, loaded.n_items) == (1, 2)


def test_no_valid_line_is_a_data_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("a\tb\nuser\tnot a time\t\tA\t\tt\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING), pytest.raises(DataError, match=r"bad\.tsv: no valid plays"):
        load_lastfm1k(path)
    assert "skipped 2 malformed lines of 2" in caplog.text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        load_lastfm1k(tmp_path / "missing.tsv")
