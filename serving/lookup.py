"""The first step of every ensemble: external listener id -> what the scorer needs.

* factor family (:class:`UserLookup`): the listener's row of the user table (or a live fold-in, or the fallback
  pseudo-user) and the items to exclude (what they have heard, padded with -1);
* session family (:class:`SessionLookup`): the listener's latest plays, oldest first, padded with -1.

Everything is loaded once per model version and then answers a batch with dictionary look-ups and vectorized
indexing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.contract import HISTORY_FILE, IDS_FILE, USERS_FILE
from serving.fold_in import LivePlays


def user_index(folder: Path) -> dict[str, int]:
    """External user id -> row, from a version's ``ids.npz``."""
    with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
        return {str(u): i for i, u in enumerate(npz["user_ids"].tolist())}


def item_index(folder: Path) -> dict[str, int]:
    """External item id -> column, from a version's ``ids.npz``."""
    with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
        return {str(item): i for i, item in enumerate(npz["item_ids"].tolist())}


class UserLookup:
    """External user id -> the row the scorer multiplies (see ``trainer.export.user_table``) and the items to
    exclude (heard items padded with -1); unknown users get the fallback pseudo-user and no exclusions.

    With :attr:`live` set, a listener with plays newer than the model is served their folded-in vector, and their
    live plays are excluded too (they replace the oldest exclusions when the row is full).
    """

    def __init__(self, folder: Path) -> None:
        self.index = user_index(folder)
        self.table = np.load(folder / USERS_FILE, allow_pickle=False)
        with np.load(folder / HISTORY_FILE, allow_pickle=False) as npz:
            self.indptr = npz["indptr"].astype(np.int64)
            self.indices = npz["indices"].astype(np.int64)
            self.data = npz["data"].astype(np.float64)
        self.unknown = len(self.indptr) - 1
        self.width = max(int(np.diff(self.indptr).max()) if self.unknown else 1, 1)
        rows = np.append(np.arange(self.unknown), -1)  # the last row: nobody, for unknown users
        self.exclude = padded_rows(self.indptr, self.indices, rows, self.width)
        self.live: LivePlays | None = None

    def training_plays(self) -> dict[str, dict[int, float]]:
        """Every known listener's training plays (item index -> plays), what a live refold starts from."""
        out = {}
        for user, i in self.index.items():
            lo, hi = self.indptr[i], self.indptr[i + 1]
            out[user] = dict(zip(self.indices[lo:hi].tolist(), self.data[lo:hi].tolist(), strict=True))
        return out

    def __call__(self, keys: list[str]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """User vectors ``[B, D + 1]``, exclusion rows ``[B, H]``, and which users are unknown (the fallback)."""
        index = np.array([self.index.get(key, -1) for key in keys], dtype=np.int64)
        rows = np.where(index >= 0, index, self.unknown)
        vectors, exclude = self.table[rows], self.exclude[rows]
        unknown = index < 0
        if self.live is not None:
            for n, key in enumerate(keys):
                served = self.live.get(key)
                if served is not None:
                    vector, recent = served
                    vectors[n], unknown[n] = vector, False
                    exclude[n] = _with_recent(exclude[n], recent)
        return vectors, exclude, unknown


def _with_recent(row: npt.NDArray[np.int64], recent: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """An exclusion row with ``recent`` items added (kept in the free slots, else over the oldest entries)."""
    new = recent[~np.isin(recent, row)]
    if not new.size:
        return row
    kept = row[row >= 0]
    merged = np.concatenate([kept, new])[-len(row) :]
    return np.pad(merged, (0, len(row) - len(merged)), constant_values=-1)


class SessionLookup:
    """External user id -> the listener's last ``width`` plays (``[B, L]``, oldest first, padded with -1); a
    listener the run does not know, or one without recent plays, gets all padding (the scorer serves the
    popularity fallback)."""

    def __init__(self, folder: Path, sequences_file: str, width: int) -> None:
        self.index = user_index(folder)
        self.width = width
        with np.load(folder / sequences_file, allow_pickle=False) as npz:
            self.indptr = npz["indptr"].astype(np.int64)
            self.indices = npz["indices"].astype(np.int64)
        if len(self.indptr) != len(self.index) + 1:
            raise ValueError(f"{folder}: sequences for {len(self.indptr) - 1} users, ids for {len(self.index)}")

    def __call__(self, keys: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Sequences ``[B, L]`` and which listeners get the fallback."""
        rows = np.array([self.index.get(key, -1) for key in keys], dtype=np.int64)
        sequence = padded_rows(self.indptr, self.indices, rows, self.width)
        return sequence, sequence[:, 0] < 0


def padded_rows(
    indptr: npt.NDArray[np.integer[Any]], indices: npt.NDArray[np.integer[Any]], rows: npt.ArrayLike, width: int
) -> npt.NDArray[np.int64]:
    """CSR rows ``rows`` as column indices padded with -1 to ``width``; row -1 is all padding."""
    rows = np.asarray(rows, dtype=np.int64)
    valid = rows >= 0
    starts = np.where(valid, np.asarray(indptr)[np.maximum(rows, 0)], 0)
    lengths = np.where(valid, np.asarray(indptr)[np.maximum(rows, 0) + 1] - starts, 0)
    if len(lengths) and int(lengths.max()) > width:
        raise ValueError(f"a row has {int(lengths.max())} entries, more than the width {width}")
    slots = np.arange(max(width, 1))
    inside = slots[None, :] < lengths[:, None]
    flat = np.where(inside, starts[:, None] + slots[None, :], 0)
    values = np.asarray(indices, dtype=np.int64)
    return np.where(inside, values[flat] if len(values) else -1, -1).astype(np.int64)


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
