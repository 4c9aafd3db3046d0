"""The numpy work of the served steps, shared by the python-backend models in ``triton_models/``.

Kept out of the ``model.py`` files so that the ensemble steps and the fused model run the same code and so that
it can be tested without a server. Everything here is loaded once per model version (``initialize``) and then
answers a request with a dictionary look-up per user and vectorized indexing.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.run_files import HISTORY_FILE, IDS_FILE, ONNX_FILE, TORCHSCRIPT_FILE, USERS_FILE
from trainer.weights_core import weigh


class FoldIn:
    """The ALS closed-form user step against the published item factors, in numpy: a listener's vector from their
    plays, ``x = (G + Y_u^T (C_u - I) Y_u)^-1 Y_u^T c_u`` with ``G = Y^T Y + lambda I`` and the confidences of the
    training weighting (``trainer.weights_core``), exactly what ``ALS.fold_in`` computes with torch."""

    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as npz:
            self.items = npz["item_factors"].astype(np.float64)
            self.gram = npz["gram"].astype(np.float64)
            self.alpha = float(npz["alpha"])
            self.weighting = str(npz["weighting"])
            self.k1, self.b = float(npz["bm25_k1"]), float(npz["bm25_b"])
            self.item_idf = npz.get("item_idf")
            self.mean_user_total = float(npz["mean_user_total"]) if "mean_user_total" in npz else 1.0

    def vector(self, items: npt.NDArray[np.int64], plays: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        """The served row (factors, then 0) of a listener who played ``items`` ``plays`` times each (no repeats)."""
        weights = weigh(
            plays, self.weighting, item_idf=None if self.item_idf is None else self.item_idf[items],
            mean_user_total=self.mean_user_total, k1=self.k1, b=self.b,
        )  # fmt: skip
        keep = weights > 0
        ys, confidence = self.items[items[keep]], 1.0 + self.alpha * weights[keep].astype(np.float64)
        a = self.gram + (ys.T * (confidence - 1.0)) @ ys
        x = np.linalg.solve(a, ys.T @ confidence)
        return np.append(x, 0.0).astype(np.float32)


class LivePlays:
    """Plays that reached PostgreSQL after the model was trained, per listener, with their folded-in vectors.

    Written by one poller thread (:meth:`add`), read by the request path (:meth:`get`): each listener's entry is
    replaced whole, so a reader sees the old or the new vector, never a half-built one.
    """

    def __init__(self, fold_in: FoldIn, history: dict[str, dict[int, float]], max_items: int) -> None:
        self.fold_in = fold_in
        self.history = history  # known listeners' training plays, item index -> plays (for refolding them)
        self.max_items = max_items
        self._plays: dict[str, dict[int, float]] = {}
        self._served: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = {}

    def add(self, events: list[tuple[str, int]]) -> set[str]:
        """(listener, item index) plays; refolds each listener touched and returns them."""
        touched = set()
        for user, item in events:
            plays = self._plays.setdefault(user, {})
            plays[item] = plays.get(item, 0.0) + 1.0
            touched.add(user)
        for user in touched:
            merged = dict(self.history.get(user, {}))
            for item, count in self._plays[user].items():
                merged[item] = merged.get(item, 0.0) + count
            items = np.fromiter(merged, dtype=np.int64, count=len(merged))
            plays_ = np.fromiter(merged.values(), dtype=np.float64, count=len(merged))
            recent = np.fromiter(self._plays[user], dtype=np.int64)[-self.max_items :]
            self._served[user] = (self.fold_in.vector(items, plays_), recent)
        return touched

    def get(self, user: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None:
        """(vector, live items to exclude) of a listener with live plays, else ``None``."""
        return self._served.get(user)


class UserLookup:
    """External user id -> the row the scorer multiplies (see ``trainer.export.user_table``) and the items to
    exclude (heard items padded with -1); unknown users get the fallback pseudo-user and no exclusions.

    With :attr:`live` set, a listener with plays newer than the model is served their folded-in vector, and their
    live plays are excluded too (they replace the oldest exclusions when the row is full).
    """

    def __init__(self, folder: Path) -> None:
        with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
            users = npz["user_ids"]
        self.index = {str(u): i for i, u in enumerate(users.tolist())}
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


class ItemIds:
    """Item index -> external id as UTF-8 bytes; -1 (padding) -> ``b""``."""

    def __init__(self, folder: Path) -> None:
        with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
            ids = npz["item_ids"]
        self.ids = np.array([str(i).encode() for i in ids.tolist()] + [b""], dtype=object)
        self.padding = len(ids)

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        return self.ids[np.where(items >= 0, items, self.padding)]  # type: ignore[no-any-return]


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


class Scorer:
    """The exported scorer of a version, run on numpy arrays: TorchScript (torch.jit) or ONNX (onnxruntime)."""

    def __init__(self, folder: Path, fmt: str, *, threads: int = 1) -> None:
        # Only the runtime of this format is imported: an ONNX scorer process never loads torch (~350 MB).
        self.format = fmt
        if fmt == "torchscript":
            import torch

            torch.set_num_threads(threads)
            self._torch = torch
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
                self._module = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location="cpu").eval()  # type: ignore[no-untyped-call]
        elif fmt == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_cpu_mem_arena = False  # the arena kept batch-sized buffers for good (+300 MB at 1M items)
            self._session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        else:
            raise ValueError(f"unknown scorer format {fmt!r} (torchscript or onnx)")

    def __call__(
        self, users: npt.NDArray[np.float32], exclude: npt.NDArray[np.int64], top_k: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Inputs shaped [B, D + 1] (user vectors), [B, H], [B, 1]; returns scores and item indices [B, max(top_k)]."""
        if self.format == "torchscript":
            torch = self._torch
            with torch.inference_mode():
                scores, items = self._module(
                    torch.from_numpy(users), torch.from_numpy(exclude), torch.from_numpy(top_k)
                )
            return scores.numpy(), items.numpy()
        scores, items = self._session.run(
            ["SCORES", "ITEMS"], {"USER_VECTOR": users, "EXCLUDE": exclude, "TOP_K": top_k}
        )
        return scores, items


def stack_exclusions(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Concatenates [b_i, H_i] exclusion blocks, padding narrower ones with -1."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in parts])
