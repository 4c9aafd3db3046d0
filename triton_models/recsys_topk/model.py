"""Step 3 of both ensembles: trim the scorer's candidates to each request's TOP_K, map indices to external ids.

The scorer returns ``max(TOP_K)`` candidates for a whole batch with already-heard items masked; this step cuts
each request back to its own k, drops padding (-1) and returns external item ids as strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / args["model_version"]
        with np.load(folder / "ids.npz", allow_pickle=False) as npz:
            ids = npz["item_ids"]
        # Encoded once: index n_items is the empty id that padding (-1) maps to.
        self.item_ids = np.array([str(i).encode() for i in ids.tolist()] + [b""], dtype=object)
        self.padding = len(ids)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        items = pb_utils.get_input_tensor_by_name(request, "ITEMS").as_numpy()
        scores = pb_utils.get_input_tensor_by_name(request, "SCORES").as_numpy()
        k = int(pb_utils.get_input_tensor_by_name(request, "TOP_K").as_numpy().reshape(-1).max())
        items, scores = items[:, :k], scores[:, :k]
        # Rows of one request share k; a row that ran out of items is padded with "" / -inf.
        ids = self.item_ids[np.where(items >= 0, items, self.padding)]
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("ITEM_IDS", ids),
                pb_utils.Tensor("SCORES", np.ascontiguousarray(scores, dtype=np.float32)),
            ]
        )
