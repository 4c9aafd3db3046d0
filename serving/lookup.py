"""The first step of every ensemble: external listener id -> what the scorer needs.

* factor family (:class:`UserLookup`): the listener's row of the user table (or a live fold-in, or the fallback
  pseudo-user) and the items to exclude (what they have heard, padded with -1);
* session family (:class:`SessionLookup`): the listener's latest plays, oldest first, padded with -1.

Everything is loaded once per model version and then answers a batch with dictionary look-ups and vectorized
indexing. Histories stay in CSR form and only a batch's rows are padded, when it arrives: the padded
[users + 1, longest history] matrix held before was 2.6 GB at 50,000 listeners of a 10M-item catalogue
(``benchmarks/results/catalog_scale-50k-listeners-audience.md``) and could not be built at 1M.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.contract import HISTORY_FILE, IDS_FILE, PAD, USERS_FILE
from serving.fold_in import LivePlays, TrainingPlays
from serving.topk import ascii_bytes


def user_index(folder: Path) -> dict[str, int]:
    """External user id -> row, from a version's ``ids.npz``."""
    with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
        return id_dict(npz["user_ids"])


def item_index(folder: Path) -> SortedIds:
    """External item id -> column, from a version's ``ids.npz`` (what the live fold-in's poller maps events with)."""
    with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
        return SortedIds(npz["item_ids"])


class SortedIds:
    """External id -> position by binary search over the ids sorted once: integer ids as int64 or uint64 (a key
    matches in its canonical decimal form only, as ``str(id)`` would), text ids as ``ids.npz`` holds them (ASCII
    as bytes: :func:`serving.topk.ascii_bytes`). A repeated id answers its first position (a dict answered its
    last; ids are unique).

    For the item ids of the live fold-in's poller, which looks up a few events per poll: a dict of 10M Python
    strings holds ~1.1 GB (``benchmarks/results/id_index.md`` compares both). The lookup's user ids stay a dict
    (:func:`id_dict`): they are on every request's path.
    """

    def __init__(self, ids: npt.NDArray[Any]) -> None:
        integers = {"i": np.int64, "u": np.uint64}.get(ids.dtype.kind)
        keys = ascii_bytes(ids.astype(str)) if integers is None else ids.astype(integers)
        order = np.argsort(keys, kind="stable")
        self.sorted = keys[order]
        self.order = order.astype(np.int32) if len(order) < 2**31 else order  # half the memory

    def __len__(self) -> int:
        return len(self.sorted)

    def get(self, key: str) -> int | None:
        """``key``'s position in the ids it was built from, or None; the first one if an id repeats."""
        probe = self._probe(key)
        if probe is None:
            return None
        at = int(np.searchsorted(self.sorted, probe))
        if at < len(self.sorted) and self.sorted[at] == probe:
            return int(self.order[at])
        return None

    def _probe(self, key: str) -> int | str | bytes | None:
        """``key`` as the stored ids are, or None where it cannot be one of them."""
        kind = self.sorted.dtype.kind
        if kind in "iu":
            try:
                value = int(key)
            except ValueError:
                return None
            bounds = np.iinfo(self.sorted.dtype)
            return value if str(value) == key and bounds.min <= value <= bounds.max else None
        chars = self.sorted.dtype.itemsize // (1 if kind == "S" else 4)
        if len(key) > chars or key.endswith("\0"):
            return None  # numpy would cut it to the stored width (or drop the NULs) and match another id
        if kind == "S":
            return key.encode("ascii") if key.isascii() else None  # every stored id is ASCII
        return key


def id_dict(ids: npt.NDArray[Any]) -> dict[str, int]:
    """External id -> position as a dict: the lookup's user ids, read on every request."""
    # astype(str) converts in C: a third of the time of str() per id at a million ids
    return dict(zip(ids.astype(str).tolist(), range(len(ids)), strict=True))


def compact_indices(indices: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.integer[Any]]:
    """Item indices as int32 when the catalogue allows (half of int64's memory), without a copy if already so."""
    if indices.dtype == np.int32 or (len(indices) and int(indices.max()) > np.iinfo(np.int32).max):
        return indices
    return indices.astype(np.int32)


def load_csr(path: Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.integer[Any]]]:
    """A CSR's ``indptr`` (int64) and ``indices`` (:func:`compact_indices`) from an ``.npz``, without a second copy
    of either when they were saved so: the lookups of both families hold their histories this way."""
    with np.load(path, allow_pickle=False) as npz:
        return npz["indptr"].astype(np.int64, copy=False), compact_indices(npz["indices"])


class UserLookup:
    """External user id -> the row the scorer multiplies (see ``trainer.export.user_table``) and the items to
    exclude (heard items padded with -1); unknown users get the fallback pseudo-user and no exclusions.

    The histories are held as CSR (``indptr``, int32 ``indices``); each call pads just its batch's rows, so the
    memory is the CSR's and the start is reading it. The rows are padded to :attr:`width`, the version's longest
    training history, as the dense matrix did: Triton's dynamic batcher puts requests into one batch only when
    their tensors have one shape (unless the input allows ragged batches), so a width per lookup batch would
    keep the scorer from batching requests that left the lookup in different batches.

    With :attr:`live` set, a listener with plays newer than the model is served their folded-in vector, and their
    live plays are excluded too, after their training history: such a row may outgrow :attr:`width`, and the batch
    is then padded to it (no training exclusion is dropped).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.index = user_index(folder)
        self.table = np.load(folder / USERS_FILE, allow_pickle=False)
        self.indptr, self.indices = load_csr(folder / HISTORY_FILE)
        self.unknown = len(self.indptr) - 1  # the table's last row: the fallback pseudo-user
        self.width = max(int(np.diff(self.indptr).max()) if self.unknown else 1, 1)
        self.live: LivePlays | None = None

    def training_plays(self) -> TrainingPlays:
        """Every known listener's training plays, read from the CSR on demand (what a live refold starts from).
        The plays themselves are loaded here, only where live fold-in runs."""
        with np.load(self.folder / HISTORY_FILE, allow_pickle=False) as npz:
            plays = npz["data"].astype(np.float32, copy=False)
        return TrainingPlays(self.index, self.indptr, self.indices, plays)

    def __call__(self, keys: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """User vectors ``[B, D + 1]``, exclusion rows ``[B, H]`` (H: :attr:`width`, or a longer live row), and
        which users are unknown (the fallback)."""
        index = np.fromiter((self.index.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
        vectors = self.table[np.where(index >= 0, index, self.unknown)]
        unknown = index < 0
        exclude = padded_rows(self.indptr, self.indices, index, self.width)
        if self.live is not None:
            recent: dict[int, npt.NDArray[np.int64]] = {}
            for n, key in enumerate(keys):
                served = self.live.get(key)
                if served is not None:
                    vectors[n], unknown[n] = served[0], False
                    recent[n] = served[1]
            if recent:
                exclude = _with_recent(exclude, recent)
        return vectors, exclude, unknown


def _with_recent(exclude: npt.NDArray[np.int64], recent: dict[int, npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Exclusion rows with each listed row's ``recent`` items appended (those it lacks), widened if needed."""
    rows = {}
    for n, items in recent.items():
        heard = exclude[n][exclude[n] >= 0]
        rows[n] = np.concatenate([heard, items[~np.isin(items, heard)]])
    width = max(exclude.shape[1], *(len(row) for row in rows.values()))
    out = np.pad(exclude, ((0, 0), (0, width - exclude.shape[1])), constant_values=PAD)
    for n, row in rows.items():
        out[n, : len(row)] = row
    return out


class SessionLookup:
    """External user id -> the listener's last ``width`` plays (``[B, L]``, oldest first, padded with -1); a
    listener the run does not know, or one without recent plays, gets all padding (the scorer serves the
    popularity fallback)."""

    def __init__(self, folder: Path, sequences_file: str, width: int) -> None:
        self.index = user_index(folder)
        self.width = width
        self.indptr, self.indices = load_csr(folder / sequences_file)
        if len(self.indptr) != len(self.index) + 1:
            raise ValueError(f"{folder}: sequences for {len(self.indptr) - 1} users, ids for {len(self.index)}")

    def __call__(self, keys: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Sequences ``[B, L]`` and which listeners get the fallback."""
        rows = np.array([self.index.get(key, -1) for key in keys], dtype=np.int64)
        sequence = padded_rows(self.indptr, self.indices, rows, self.width)
        return sequence, sequence[:, 0] < 0


def padded_rows(
    indptr: npt.NDArray[np.integer[Any]],
    indices: npt.NDArray[np.integer[Any]],
    rows: npt.ArrayLike,
    width: int | None = None,
) -> npt.NDArray[np.int64]:
    """CSR rows ``rows`` as column indices padded with -1 to ``width`` (default: the longest of them, at least 1);
    row -1 is all padding. Reads only those rows' entries: no pass over the whole CSR."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    indptr = np.asarray(indptr)
    valid = rows >= 0
    starts = np.where(valid, indptr[np.maximum(rows, 0)], 0).astype(np.int64)
    lengths = np.where(valid, indptr[np.maximum(rows, 0) + 1] - starts, 0).astype(np.int64)
    longest = int(lengths.max()) if len(lengths) else 0
    if width is None:
        width = max(longest, 1)
    elif longest > width:
        raise ValueError(f"a row has {longest} entries, more than the width {width}")
    out = np.full((len(rows), max(width, 1)), PAD, dtype=np.int64)
    total = int(lengths.sum())
    if total:
        owner = np.repeat(np.arange(len(rows)), lengths)
        slot = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[owner, slot] = np.asarray(indices)[np.repeat(starts, lengths) + slot]
    return out


def decode_user_ids(raw: npt.NDArray[Any]) -> list[str]:
    """BYTES tensor values (bytes, or str/int in tests) as stripped-of-nothing strings."""
    return [u.decode("utf-8", "replace") if isinstance(u, bytes) else str(u) for u in raw.reshape(-1).tolist()]


def check_request(keys: list[str], top_k: npt.NDArray[np.int64], max_top_k: int) -> str | None:
    """The INVALID_ARG message for a bad request, or ``None``."""
    bad = top_k[(top_k < 1) | (top_k > max_top_k)]
    if bad.size:
        return f"TOP_K must be in 1..{max_top_k}, got {int(bad[0])}"
    if any(not key.strip() for key in keys):
        return "USER_ID must not be empty"
    return None
