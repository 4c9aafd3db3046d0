"""The last step of every ensemble: each request's own k, item indices mapped to external ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.contract import IDS_FILE


class ItemIds:
    """Item index -> external id as UTF-8 bytes; -1 (padding) -> ``b""``."""

    def __init__(self, folder: Path) -> None:
        with np.load(folder / IDS_FILE, allow_pickle=False) as npz:
            ids = npz["item_ids"]
        self.ids = np.array([str(i).encode() for i in ids.tolist()] + [b""], dtype=object)
        self.padding = len(ids)

    def __call__(self, items: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        return self.ids[np.where(items >= 0, items, self.padding)]  # type: ignore[no-any-return]


def trim(
    items: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The first ``k`` candidates of each row (the scorer returned max(TOP_K) of the whole batch)."""
    return items[:, :k], np.ascontiguousarray(scores[:, :k], dtype=np.float32)
