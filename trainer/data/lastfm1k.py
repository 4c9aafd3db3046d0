"""Last.fm-1K style listening logs: one play per line, the source of timestamps and listening sessions.

Lines are ``userid <TAB> timestamp <TAB> artist-mbid <TAB> artist-name <TAB> track-mbid <TAB> track-name``
without a header. The item is the artist (its MusicBrainz id when present, else its name) and the weight is
the number of plays; every play is also kept as an :class:`Events` row for temporal splits and session models.

The real file has 19 million lines, so it is read in blocks of whole lines: ids become integer codes block by
block (no 19-million-entry string arrays), and each line's tab count is taken from the raw bytes so that a
line with too few or too many fields is skipped and counted rather than padded or shifted by the parser.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.core.errors import DataError
from trainer.data.interactions import IdMap, IndexArray, Interactions, from_frame

logger = logging.getLogger(__name__)

COLUMNS = ["user", "timestamp", "artist_id", "artist_name", "track_id", "track_name"]
_TABS = len(COLUMNS) - 1
_BLOCK_BYTES = 1 << 26


def load_lastfm1k(path: Path) -> Interactions:
    """Play counts per (user, artist), first-play times and the time-ordered plays of every user."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file or directory")
    users, items = _Vocabulary(), _Vocabulary()
    user_codes: list[IndexArray] = []
    item_codes: list[IndexArray] = []
    times: list[npt.NDArray[np.int64]] = []
    n_lines = n_bad = 0
    for block in _line_blocks(path):
        rows, ok, blank = _parse_block(block, path.name)
        n_lines += int((~blank).sum())
        n_bad += int((~ok & ~blank).sum())
        if rows.empty:
            continue
        artist_ids = rows["artist_id"].to_numpy(dtype=object)
        artist_names = rows["artist_name"].to_numpy(dtype=object)
        keys = np.where(artist_ids != "", artist_ids, artist_names)
        user_codes.append(users.codes(rows["user"].to_numpy(dtype=object)))
        item_codes.append(items.codes(keys, names=artist_names))
        times.append(rows["seconds"].to_numpy(dtype=np.int64))

    if n_bad:
        logger.warning("%s: skipped %d malformed lines of %d", path.name, n_bad, n_lines)
    if not user_codes:
        raise DataError(f"{path.name}: no valid plays (expected 6 tab-separated fields with an ISO 8601 time)")

    plays = pd.DataFrame(
        {
            "user": np.concatenate(user_codes),
            "item": np.concatenate(item_codes),
            "time": np.concatenate(times),
        }
    )
    # Repeated plays are the point of a log, so the folded-row count is not worth a warning here.
    coded, _ = from_frame(plays, user_col="user", item_col="item", weight_col=None, time_col="time", source=path.name)
    # The id maps hold codes; swap in the external ids and names they stand for (indices stay the same).
    return dataclasses.replace(
        coded,
        user_ids=IdMap(users.values()[coded.user_ids.ids.astype(np.int64)]),
        item_ids=IdMap(items.values()[coded.item_ids.ids.astype(np.int64)]),
        item_names=items.names()[coded.item_ids.ids.astype(np.int64)],
    )


class _Vocabulary:
    """Grows a string -> code table block by block, remembering the first name seen for each code."""

    def __init__(self) -> None:
        self._index = pd.Index([], dtype=object)
        self._names: list[npt.NDArray[np.object_]] = []

    def codes(self, values: npt.NDArray[np.object_], names: npt.NDArray[np.object_] | None = None) -> IndexArray:
        local, uniques = pd.factorize(values)
        unique_values = np.asarray(uniques, dtype=object)
        found = self._index.get_indexer(pd.Index(unique_values, dtype=object))
        new = found == -1
        found[new] = len(self._index) + np.arange(int(new.sum()))
        self._index = self._index.append(pd.Index(unique_values[new], dtype=object))
        if names is not None:
            # pd.factorize numbers values in order of first appearance, so np.unique finds each first row.
            _, first_row = np.unique(local, return_index=True)
            self._names.append(names[first_row][new])
        return found[local].astype(np.int32)

    def values(self) -> npt.NDArray[np.object_]:
        return np.asarray(self._index, dtype=object)

    def names(self) -> npt.NDArray[np.object_]:
        return np.concatenate(self._names) if self._names else np.empty(0, dtype=object)


def _line_blocks(path: Path) -> Iterator[bytes]:
    """The file in blocks of whole lines, each ending with a newline."""
    with path.open("rb") as handle:
        rest = b""
        while chunk := handle.read(_BLOCK_BYTES):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            if cut:
                yield chunk[:cut]
        if rest:
            yield rest + b"\n"


def _parse_block(block: bytes, source: str) -> tuple[pd.DataFrame, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Parses one block: the valid rows (with epoch ``seconds``), which lines are valid and which are blank.

    pandas pads short lines, drops or shifts long ones depending on the first line, so lines without exactly
    six fields are found from the raw bytes and cut out before pandas sees the block; both masks returned
    have one entry per line of the block.
    """
    raw = np.frombuffer(block, dtype=np.uint8)
    line_ends = np.flatnonzero(raw == ord("\n"))
    line_starts = np.concatenate(([0], line_ends[:-1] + 1))
    length = line_ends - line_starts
    blank = (length == 0) | ((length == 1) & (raw[np.minimum(line_starts, len(raw) - 1)] == ord("\r")))
    tabs = np.diff(np.searchsorted(np.flatnonzero(raw == ord("\t")), line_ends), prepend=0)
    shaped = tabs == _TABS
    ok = np.zeros(len(line_ends), dtype=bool)
    if not shaped.any():
        return pd.DataFrame(columns=[*COLUMNS, "seconds"]), ok, blank
    if not shaped.all():
        # Byte mask of the well-shaped lines: +1 at each one's start, -1 after its newline, summed up.
        edges = np.zeros(len(raw) + 1, dtype=np.int8)
        edges[line_starts[shaped]] += 1
        edges[line_ends[shaped] + 1] -= 1
        block = raw[np.cumsum(edges[:-1], dtype=np.int8).astype(bool)].tobytes()
    frame = pd.read_csv(
        io.BytesIO(block),
        sep="\t",
        header=None,
        names=COLUMNS,
        index_col=False,
        dtype=str,
        quoting=csv.QUOTE_NONE,
        na_filter=False,
        skip_blank_lines=False,
        lineterminator="\n",
        encoding="utf-8",
        encoding_errors="replace",
    )
    if len(frame) != int(shaped.sum()):
        raise DataError(f"{source}: cannot parse as a tab-separated listening log")
    parsed = pd.to_datetime(frame["timestamp"], format="ISO8601", utc=True, errors="coerce")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    frame["seconds"] = seconds.fillna(0).astype("int64")
    has_artist = (frame["artist_id"].to_numpy(dtype=object) != "") | (frame["artist_name"].to_numpy(dtype=object) != "")
    valid_rows = parsed.notna().to_numpy() & (frame["user"].to_numpy(dtype=object) != "") & has_artist
    ok[np.flatnonzero(shaped)] = valid_rows
    return frame.loc[valid_rows].reset_index(drop=True), ok, blank
