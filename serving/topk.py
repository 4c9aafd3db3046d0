"""Each request's own k, item indices mapped to external ids: ``recsys_topk`` and ``recsys_session_topk``, and the
end of ``recsys_scorer_ann`` (which ends ``recsys_ann``) and of ``recsys_fused``."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.contract import IDS_FILE, ITEM_IDS, SCORES


class ItemIds:
    """Item index -> external id as UTF-8 bytes; -1 (padding) -> ``b""``.

    The ids stay as ``ids.npz`` holds them (int64, or fixed-width text, stored as ASCII bytes when they are ASCII):
    only the ids a batch returns are encoded. Encoding all 10M ids into Python bytes at start took 2.8 s and
    540 MB.
    """

    def __init__(self, folder: Path) -> None:
        with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
            ids = npz["item_ids"]
        self.ids = ascii_bytes(ids) if ids.dtype.kind == "U" else ids  # not ASCII: encoded when returned
        self.padding = len(ids)

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        found = items >= 0
        if not self.padding:
            return np.full(items.shape, b"", dtype=object)
        picked = self.ids[np.where(found, items, 0)]
        if picked.dtype.kind == "U":
            encoded = np.char.encode(picked, "utf-8")
        elif picked.dtype.kind == "S":
            encoded = picked
        else:
            encoded = picked.astype(np.bytes_)  # integer ids: their decimal digits
        out = encoded.astype(object)
        out[~found] = b""
        return out


def ascii_bytes(text: npt.NDArray[np.str_]) -> npt.NDArray[Any]:
    """Fixed-width text as fixed-width bytes when every id is ASCII (a quarter of UCS-4's memory), else as it is."""
    with suppress(UnicodeEncodeError):
        return text.astype(np.bytes_)
    return text


def trim(
    items: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The first ``k`` candidates of each row (the scorer returned max(TOP_K) of the whole batch)."""
    return items[:, :k], np.ascontiguousarray(scores[:, :k], dtype=np.float32)


def ranked(
    item_ids: ItemIds,
    items: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    top_ks: list[npt.NDArray[np.int64]],
) -> list[dict[str, npt.NDArray[Any]]]:
    """A batch's best-first candidates (max(TOP_K) per row) as each request's answer: its rows (one ``top_ks``
    array per request), cut to its own k, as external ids."""
    out, start = [], 0
    for top_k in top_ks:
        stop = start + len(top_k)
        kept, kept_scores = trim(items[start:stop], scores[start:stop], int(top_k.max()))
        out.append({ITEM_IDS: item_ids(kept), SCORES: kept_scores})
        start = stop
    return out
