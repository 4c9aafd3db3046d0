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

from trainer.run_files import HISTORY_FILE, IDS_FILE, ONNX_FILE, TORCHSCRIPT_FILE


class UserLookup:
    """External user id -> index, plus every user's heard items padded with -1 (one extra all-padding row)."""

    def __init__(self, folder: Path) -> None:
        with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
            users = npz["user_ids"]
        self.index = {str(u): i for i, u in enumerate(users.tolist())}
        with np.load(folder / HISTORY_FILE, allow_pickle=False) as npz:
            indptr = npz["indptr"].astype(np.int64)
            indices = npz["indices"].astype(np.int64)
        self.unknown = len(indptr) - 1
        self.width = max(int(np.diff(indptr).max()) if self.unknown else 1, 1)
        rows = np.append(np.arange(self.unknown), -1)  # the last row: nobody, for unknown users
        self.exclude = padded_rows(indptr, indices, rows, self.width)

    def __call__(self, keys: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """User indices (-1 when unknown) and their exclusion rows."""
        index = np.array([self.index.get(key, -1) for key in keys], dtype=np.int64)
        return index, self.exclude[np.where(index >= 0, index, self.unknown)]


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
        self, users: npt.NDArray[np.int64], exclude: npt.NDArray[np.int64], top_k: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Inputs shaped [B, 1], [B, H], [B, 1]; returns scores and item indices [B, max(top_k)]."""
        if self.format == "torchscript":
            torch = self._torch
            with torch.inference_mode():
                scores, items = self._module(
                    torch.from_numpy(users), torch.from_numpy(exclude), torch.from_numpy(top_k)
                )
            return scores.numpy(), items.numpy()
        scores, items = self._session.run(
            ["SCORES", "ITEMS"], {"USER_INDEX": users, "EXCLUDE": exclude, "TOP_K": top_k}
        )
        return scores, items


def stack_exclusions(parts: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Concatenates [b_i, H_i] exclusion blocks, padding narrower ones with -1."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in parts])
